//! Process titles, so that `ps` tells the master from worker 3. Used by both.
//!
//! Linux shows a process's command line (`ps -o cmd`) straight from the memory where the kernel
//! put `argv` at exec, and its short name (`ps -o comm`, `top`) from the task's `comm`. We
//! rewrite both, the way nginx and PostgreSQL do. The title cannot be longer than the original
//! command line; it is cut to fit.

use std::ffi::CString;

/// Sets the command line shown by `ps` to `title` and the short name to `comm` (at most 15
/// bytes). Best effort: a failure leaves the old title, which is harmless.
pub fn set(title: &str, comm: &str) {
    if let Ok(name) = CString::new(comm) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let Some((start, end)) = argv_area() else {
        return;
    };
    let len = end - start;
    if len < 2 {
        return;
    }
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [start, end) is this process's argv block, as the kernel reports it in
    // /proc/self/stat: mapped, writable stack memory that nothing else owns. Callers run before
    // any other thread exists, and the arguments were parsed before (std::env::args reads this
    // memory, so it returns the title afterwards). The block stays NUL-terminated.
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
}

/// `arg_start` and `arg_end` (fields 48 and 49 of /proc/self/stat).
fn argv_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The second field is the command name in parentheses and may contain spaces; count fields
    // after the last ')', where field 3 starts.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    (end > start).then_some((start, end))
}
