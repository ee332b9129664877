//! `slipctl`: parse arguments, start telemetry, run the command, map errors to exit status
//! (0 done, 1 failed on some host, 2 bad input, 3 busy). With `--output json` (or `jsonl`) an
//! error is also one JSON document on stdout: `{"error", "fix", "kind", "exit_code"}`.

use std::process::ExitCode;

use clap::Parser;
use slipway_controller::cli::output::OutputFormat;

/// The output format asked for on the command line, read even when the arguments do not parse.
fn asked_format() -> OutputFormat {
    let args: Vec<String> = std::env::args().collect();
    let value = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--output=")
            .map(str::to_owned)
            .or_else(|| (a == "--output").then(|| args.get(i + 1).cloned()).flatten())
    });
    match value.as_deref() {
        Some("json") => OutputFormat::Json,
        Some("jsonl") => OutputFormat::Jsonl,
        _ => OutputFormat::Text,
    }
}

fn main() -> ExitCode {
    let cli = match slipway_controller::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let format = asked_format();
            if code == 2 && format.is_json() {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_owned();
                println!(
                    "{}",
                    format.doc_text(&serde_json::json!({
                        "error": first,
                        "fix": "see `slipctl --help` and `slipctl COMMAND --help`",
                        "kind": "usage",
                        "exit_code": 2,
                    }))
                );
            }
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let format = cli.output;
    slipway_common::telemetry::init("warn");
    slipway_common::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("slipctl").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(slipway_controller::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            ExitCode::from(slipway_controller::cli::report_error(&slipway_controller::cli::Cx::terminal(format), &e))
        }
    }
}
