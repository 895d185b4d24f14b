//! Where the report goes: the table to standard output (or to standard error when a document takes
//! standard output: `--json -`, `--svg -`), the JSON document and the SVG chart to their files or to
//! standard output; and how an error is printed (each cause once).

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use testbed::report::{self, document, Row};

use super::args::{is_stdout, Args};

/// Refuse output flags that cannot all be honoured, before anything runs.
pub fn check(args: &Args) -> Result<()> {
    if let (Some(json), Some(svg)) = (&args.json, &args.svg) {
        if is_stdout(json) && is_stdout(svg) {
            bail!("--json - and --svg - cannot both write to standard output");
        }
    }
    Ok(())
}

/// Print the table and write the document and chart.
pub fn emit(args: &Args, rows: &[Row], info: &document::RunInfo) -> Result<()> {
    let table = report::table(rows);
    if args.table_to_stderr() {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&document::document(rows, info))? + "\n";
        write(path, &text)?;
    }
    if let Some(path) = &args.svg {
        write(path, &report::svg::chart(rows))?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if is_stdout(path) {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("writing to standard output")
    } else {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// An error and its causes on one line, `: `-separated, leaving out a cause whose text the message
/// already carries (so no cause is printed twice).
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, thiserror::Error)]
    #[error("disk I/O failed: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn causes_are_printed_once() {
        let io = || std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(Repeats(io())).context("opening x.img");
        let text = describe(&e);
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(
            text.starts_with("opening x.img: disk I/O failed: "),
            "{text}"
        );
        let plain = anyhow::Error::new(io()).context("writing out.json");
        assert_eq!(describe(&plain), format!("writing out.json: {}", io()));
    }

    #[test]
    fn both_documents_cannot_take_stdout() {
        let args = Args::parse_from(["testbed", "--json", "-", "--svg", "-"]);
        assert!(check(&args).is_err());
        check(&Args::parse_from([
            "testbed", "--json", "-", "--svg", "c.svg",
        ]))
        .unwrap();
    }
}
