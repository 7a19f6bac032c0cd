//! `rbctl`: see the crate documentation (`src/lib.rs`) and artefacts/rbctl.md.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use rbctl::cli::Cli;
use rbctl::error::{one_line, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rbctl: error: cannot start the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(rbctl::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is_quiet() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbctl: error: {}", e.one_line());
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--help` / `--version` print and succeed; every other parse failure is one line on
/// stderr and exit 64 (clap's own code, 2, is the `tasks wait` timeout).
fn usage(e: &clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Writing help to a closed pipe is not an error worth reporting.
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "rbctl: error: {}",
        usage_line(e.kind(), &e.render().to_string())
    );
    ExitCode::from(EXIT_USAGE)
}

/// Clap's multi-line message as one line: the error, the usage, where to find help.
fn usage_line(kind: ErrorKind, rendered: &str) -> String {
    let usage = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(str::trim);
    let what = if kind == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "a command is missing".to_owned()
    } else {
        // The error line, plus clap's hints (`[possible values: …]`, `tip: …`).
        let parts: Vec<&str> = rendered
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .filter(|l| !l.is_empty())
            .collect();
        let mut text = String::new();
        for part in parts {
            if !text.is_empty() {
                text.push_str(if text.ends_with(':') { " " } else { "; " });
            }
            text.push_str(part);
        }
        let text = text.strip_prefix("error: ").unwrap_or(&text);
        if text.is_empty() {
            "invalid arguments".to_owned()
        } else {
            one_line(text)
        }
    };
    match usage {
        Some(usage) => {
            let command: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect();
            format!(
                "{what} (usage: {usage}; see '{} --help')",
                command.join(" ")
            )
        }
        None => format!("{what} (see 'rbctl --help')"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use '-- --bogus'\n\nUsage: rbctl tasks list [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(ErrorKind::UnknownArgument, rendered),
            "unexpected argument '--bogus' found; tip: to pass '--bogus' as a value, use '-- --bogus' (usage: rbctl tasks list [OPTIONS]; see 'rbctl tasks list --help')"
        );
        let help = "Asynchronous tasks\n\nUsage: rbctl tasks [OPTIONS] <COMMAND>\n\nCommands:\n  submit  …\n";
        assert_eq!(
            usage_line(ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand, help),
            "a command is missing (usage: rbctl tasks [OPTIONS] <COMMAND>; see 'rbctl tasks --help')"
        );
        assert_eq!(
            usage_line(
                ErrorKind::MissingRequiredArgument,
                "error: the following required arguments were not provided:\n  <PATH>\n\nUsage: rbctl tasks submit <PATH> [-]\n"
            ),
            "the following required arguments were not provided: <PATH> (usage: rbctl tasks submit <PATH> [-]; see 'rbctl tasks submit --help')"
        );
        assert_eq!(
            usage_line(ErrorKind::InvalidValue, "error: bad\n"),
            "bad (see 'rbctl --help')"
        );
    }

    #[test]
    fn real_clap_errors_are_mapped() {
        for args in [
            vec!["rbctl"],
            vec!["rbctl", "--bogus"],
            vec!["rbctl", "tasks", "wait", "x", "--timeout", "soon"],
        ] {
            let e = Cli::try_parse_from(&args).unwrap_err();
            let line = usage_line(e.kind(), &e.render().to_string());
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains("--help"), "{args:?}: {line}");
        }
    }
}
