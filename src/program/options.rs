//! The app's options beside clusterd's: one command line, one environment, one config file.
//! Runs in the master (at start and on reload) and in `--check-config`.
//!
//! The app declares its options once, as a clap struct. The config file's keys that are not
//! clusterd's are the app's, named as its long flags; they are handed to clap as flags placed
//! before the real ones, for every option the command line and the environment left unset.
//! So clap parses and checks every value, whatever its source, and the precedence is
//! clusterd's: flag, variable, file, default.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use super::Service;
use crate::config::{Cli, Config, ConfigError, FileKey};

/// The whole command line of `S`: clusterd's options and subcommands, the app's options, and
/// the app's subcommands.
pub fn command<S: Service>() -> Command {
    use clap::CommandFactory;
    let base = Cli::command();
    let about: clap::builder::StyledStr = S::ABOUT
        .map(Into::into)
        .or_else(|| base.get_about().cloned())
        .unwrap_or_default();
    let mut cmd = <S::Options as clap::Args>::augment_args(base.name(S::NAME))
        // The options struct's doc comment is not the program's headline.
        .about(about)
        .long_about(None::<&str>)
        // `status` and the app's subcommands need none of the service's required options.
        .subcommand_negates_reqs(true)
        .mut_arg("data_dir", |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(help.replace("./clusterd-data", &format!("./{}", default_data_dir::<S>())))
        });
    if let Some(version) = S::VERSION {
        cmd = cmd.version(version);
    }
    S::commands()
        .into_iter()
        .fold(cmd, |cmd, sub| cmd.subcommand(sub))
}

/// The data dir when neither an option nor systemd's `$STATE_DIRECTORY` names one:
/// `<name>-data`, so two programs started in one directory keep apart (`clusterd-data` for
/// `clusterd`).
pub(super) fn default_data_dir<S: Service>() -> String {
    format!("{}-data", S::NAME)
}

/// [`command`] with no option required: what the command line alone says, before the config
/// file (which may hold a required option) is merged in.
pub(super) fn command_line<S: Service>() -> Command {
    command::<S>().mut_args(|a| a.required(false))
}

/// The app's options: `argv` (and the environment) over the file's app keys in `config` over
/// the defaults.
pub(super) fn app_options<S: Service>(
    argv: &[OsString],
    config: &Config,
) -> Result<S::Options, ConfigError> {
    let given = command_line::<S>()
        .try_get_matches_from(argv)
        .map_err(|e| cli_error(&e))?;
    let app_args: Vec<Arg> = <S::Options as clap::Args>::augment_args(Command::new(S::NAME))
        .get_arguments()
        .cloned()
        .collect();
    let file = config
        .file
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut from_file: Vec<OsString> = Vec::new();
    for key in &config.app_keys {
        let Some(arg) = app_args
            .iter()
            .find(|a| a.get_long() == Some(key.key.as_str()))
        else {
            return Err(ConfigError::Parse {
                path: file.clone().into(),
                message: format!("unknown key `{}`{}", key.key, key.at),
            });
        };
        if set_outside_the_file(&given, arg) {
            continue;
        }
        from_file.extend(as_flags(arg, key).map_err(|message| ConfigError::Parse {
            path: file.clone().into(),
            message,
        })?);
    }
    let mut all = vec![argv.first().cloned().unwrap_or_default()];
    all.extend(from_file);
    all.extend(argv.iter().skip(1).cloned());
    let matches = command::<S>().try_get_matches_from(all).map_err(|e| {
        // An error about an option the file set names the file's line.
        let blamed = e.get(clap::error::ContextKind::InvalidArg).and_then(|a| {
            let flag = a.to_string();
            config
                .app_keys
                .iter()
                .find(|k| flag.split([' ', '=']).next() == Some(format!("--{}", k.key).as_str()))
        });
        match blamed {
            Some(k) => ConfigError::Parse {
                path: file.clone().into(),
                message: format!("{}{}", cli_error(&e), k.at),
            },
            None => cli_error(&e),
        }
    })?;
    <S::Options as clap::FromArgMatches>::from_arg_matches(&matches).map_err(|e| cli_error(&e))
}

/// Whether the command line or the environment gave `arg` (they win over the file).
fn set_outside_the_file(given: &ArgMatches, arg: &Arg) -> bool {
    matches!(
        given.value_source(arg.get_id().as_str()),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// A file value as the flags that say the same on the command line.
fn as_flags(arg: &Arg, key: &FileKey) -> Result<Vec<OsString>, String> {
    let flag = format!("--{}", key.key);
    let takes_values = arg.get_action().takes_values();
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!(
                "`{}`: a string, number or boolean expected{}",
                key.key, key.at
            )),
        }
    };
    Ok(match (&key.value, takes_values) {
        // A switch: `true` is the flag, `false` is its absence.
        (toml::Value::Boolean(true), false) => vec![flag.into()],
        (toml::Value::Boolean(false), false) => Vec::new(),
        (_, false) => {
            return Err(format!(
                "`{}` is a switch: true or false{}",
                key.key, key.at
            ));
        }
        (toml::Value::Array(items), true) => items
            .iter()
            .map(|v| scalar(v).map(|v| format!("{flag}={v}").into()))
            .collect::<Result<_, _>>()?,
        (v, true) => vec![format!("{flag}={}", scalar(v)?).into()],
    })
}

/// clap's message without its usage block, on one line (a missing option is named on the
/// lines after the first).
pub(super) fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let said: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect();
    said.join(" ").trim_start_matches("error: ").to_string()
}

fn cli_error(e: &clap::Error) -> ConfigError {
    ConfigError::Options(one_line(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;
    use crate::worker::{BootError, WorkerApp, WorkerInfo};

    /// An app with a required option, a defaulted one and a switch.
    struct App;

    #[derive(Debug, Clone, clap::Args)]
    struct Opts {
        /// Required
        #[arg(long)]
        db: String,
        /// Defaulted
        #[arg(long, default_value_t = 3)]
        tries: u32,
        /// A switch
        #[arg(long)]
        loud: bool,
    }

    impl WorkerApp for App {
        type State = ();
        async fn init(&self, _: &WorkerInfo) -> Result<(), BootError> {
            Ok(())
        }
        fn configure(_: &(), _: &mut actix_web::web::ServiceConfig) {}
    }

    impl Service for App {
        type Options = Opts;
        const NAME: &'static str = "app";
        const VERSION: Option<&'static str> = Some("7.0");
        const ABOUT: Option<&'static str> = Some("An app");
        fn build(_: Opts, _: &super::super::Setup<'_>) -> Result<Self, BootError> {
            Ok(App)
        }
    }

    fn load(argv: &[&str], file: &[(&str, toml::Value)]) -> Result<Opts, String> {
        let mut config = Config::from_args(Args::default(), None).unwrap();
        config.file = Some("app.toml".into());
        config.app_keys = file
            .iter()
            .enumerate()
            .map(|(i, (k, v))| FileKey {
                key: k.to_string(),
                value: v.clone(),
                at: format!(" (line {})", i + 1),
            })
            .collect();
        let argv: Vec<OsString> = std::iter::once("app")
            .chain(argv.iter().copied())
            .map(Into::into)
            .collect();
        app_options::<App>(&argv, &config).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = [
            ("db", toml::Value::from("file")),
            ("tries", toml::Value::from(5)),
        ];
        let o = load(&[], &file).unwrap();
        assert_eq!((o.db.as_str(), o.tries, o.loud), ("file", 5, false));
        let o = load(&["--db", "flag"], &file).unwrap();
        assert_eq!((o.db.as_str(), o.tries), ("flag", 5));
        let o = load(&["--db", "x"], &[("loud", toml::Value::from(true))]).unwrap();
        assert!(o.loud);
        assert_eq!(o.tries, 3);
    }

    #[test]
    fn the_program_is_named_as_the_app_says() {
        let cmd = command::<App>();
        assert_eq!(cmd.get_name(), "app");
        assert_eq!(cmd.get_version(), Some("7.0"));
        assert_eq!(
            cmd.get_about().map(|a| a.to_string()).as_deref(),
            Some("An app")
        );
    }

    #[test]
    fn the_file_can_hold_a_required_option_and_subcommands_need_none() {
        let err = load(&[], &[]).unwrap_err();
        assert!(err.contains("--db"), "{err}");
        assert!(load(&[], &[("db", toml::Value::from("f"))]).is_ok());
        let m = command::<App>().try_get_matches_from(["app", "status"]);
        assert!(m.is_ok(), "{m:?}");
    }

    #[test]
    fn a_bad_or_unknown_key_names_its_line() {
        let err = load(&["--db", "x"], &[("tries", toml::Value::from("many"))]).unwrap_err();
        assert!(err.contains("--tries") && err.contains("(line 1)"), "{err}");
        let err = load(&["--db", "x"], &[("trys", toml::Value::from(1))]).unwrap_err();
        assert!(
            err.contains("unknown key `trys`") && err.contains("(line 1)"),
            "{err}"
        );
        let err = load(&["--db", "x"], &[("loud", toml::Value::from("yes"))]).unwrap_err();
        assert!(err.contains("switch"), "{err}");
    }
}
