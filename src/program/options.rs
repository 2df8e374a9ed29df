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
    let cmd = <S::Options as clap::Args>::augment_args(Cli::command().name(S::NAME));
    S::commands()
        .into_iter()
        .fold(cmd, |cmd, sub| cmd.subcommand(sub))
}

/// The app's options: `argv` (and the environment) over the file's app keys in `config` over
/// the defaults.
pub(super) fn app_options<S: Service>(
    argv: &[OsString],
    config: &Config,
) -> Result<S::Options, ConfigError> {
    let given = command::<S>()
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

/// clap's message, first line, without its `error: ` prefix.
fn cli_error(e: &clap::Error) -> ConfigError {
    let text = e.render().to_string();
    let line = text
        .lines()
        .next()
        .unwrap_or("invalid option")
        .trim_start_matches("error: ");
    ConfigError::Options(line.to_string())
}
