//! How a worker ended, in words: the exit code, or the signal and its name.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
}

pub fn describe(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        match signal_name(sig) {
            Some(name) => format!("was killed by signal {sig} ({name}{core})"),
            None => format!("was killed by signal {sig}{core}"),
        }
    } else {
        match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => "ended".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_and_codes_given() {
        assert_eq!(
            describe(ExitStatus::from_raw(6)),
            "was killed by signal 6 (SIGABRT)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(11 | 0x80)),
            "was killed by signal 11 (SIGSEGV, core dumped)"
        );
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exited with code 3");
    }
}
