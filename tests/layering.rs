//! The pure modules stay pure: `schedule`, `scheduler`, `retention`, `report`, the AWS vocabulary (`ec2::op`), which
//! organisation accounts are served (`org::decide`) and the pure half of `notify` (message text, de-dup window,
//! outbox) must not name tokio or an AWS crate, nor reach for the modules that do I/O. That is what keeps them
//! testable with plain values and a `now` argument. The check reads the source: comments and string literals are
//! blanked out first, so a comment that mentions tokio does not count and a `use` hidden behind a comment does not
//! slip through.

use std::path::{Path, PathBuf};

/// Files and directories (recursively) that must stay pure.
const PURE: &[&str] = &[
    "src/schedule.rs",
    "src/scheduler.rs",
    "src/retention",
    "src/report.rs",
    "src/ec2/op.rs",
    "src/notify/message.rs",
    "src/notify/dedup.rs",
    "src/notify/outbox.rs",
    "src/org/decide.rs",
];

/// Module paths that do I/O (a pure module importing them would import tokio or AWS through them).
const IO_PATHS: &[&[&str]] = &[
    &["ec2", "sdk"],
    &["ssm", "sdk"],
    &["org", "sdk"],
    &["notify", "sns"],
    &["notify", "sender"],
    &["super", "sns"],
    &["super", "sender"],
];

#[test]
fn pure_modules_import_neither_tokio_nor_aws_nor_the_io_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for p in PURE {
        collect(&root.join(p), &mut files);
    }
    // A renamed or moved file must not quietly leave the check with nothing to read.
    assert!(files.len() >= PURE.len(), "{files:?}");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for hit in forbidden(&text) {
            found.push(format!(
                "{}: {hit}",
                f.strip_prefix(root).unwrap().display()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "pure modules reach for I/O:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_code_and_not_comments_or_strings() {
    assert_eq!(forbidden("use tokio::sync::mpsc;"), ["tokio"]);
    assert_eq!(forbidden("#[tokio::test]\nasync fn t() {}"), ["tokio"]);
    assert_eq!(
        forbidden("fn f(c: aws_sdk_sns::Client) {}"),
        ["aws_sdk_sns"]
    );
    assert_eq!(forbidden("use crate::ec2::sdk::sdk_error;"), ["ec2::sdk"]);
    assert_eq!(
        forbidden("use super :: sender::Notifier;"),
        ["super::sender"]
    );
    // Mentioned, not used.
    assert!(forbidden("// tokio::spawn would be wrong here\nfn f() {}").is_empty());
    assert!(forbidden("/* use aws_config; /* nested */ tokio */ fn f() {}").is_empty());
    assert!(forbidden(r#"let s = "tokio::spawn"; let r = r"aws_sdk_ec2";"#).is_empty());
    assert!(forbidden(r###"let s = r#"a "quoted" tokio"#;"###).is_empty());
    assert!(forbidden(r#"let s = "escaped \" tokio";"#).is_empty());
    // Lifetimes and char literals do not derail the reader.
    assert_eq!(
        forbidden("fn f<'a>(x: &'a str) -> char { let _ = '\"'; 'x' }\nuse tokio;"),
        ["tokio"]
    );
    // Names that merely contain the words are fine.
    assert!(forbidden("let tokio_free = 1; let my_aws_thing = 2; let sender = 3;").is_empty());
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    } else if !path.exists() {
        panic!("{} does not exist: update PURE", path.display());
    }
}

/// The forbidden names the code (not its comments or strings) uses.
fn forbidden(source: &str) -> Vec<String> {
    let tokens = tokens(&code_only(source));
    let mut hits = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if t == "tokio" || t.starts_with("aws_") {
            hits.push(t.clone());
        }
        for path in IO_PATHS {
            let n = 2 * path.len() - 1;
            if i + n <= tokens.len() {
                let want = path.join(" :: ");
                let have = tokens[i..i + n].join(" ");
                if have == want {
                    hits.push(path.join("::"));
                }
            }
        }
    }
    hits
}

/// Identifiers and `::`, in order; everything else is dropped.
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
            continue;
        }
        if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
            continue;
        }
        i += 1;
    }
    out
}

/// The source with comments, string literals and char literals replaced by spaces.
fn code_only(source: &str) -> String {
    let s: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let at = |i: usize, text: &str| {
        text.chars()
            .enumerate()
            .all(|(k, c)| s.get(i + k) == Some(&c))
    };
    while i < s.len() {
        if at(i, "//") {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            let mut depth = 0;
            while i < s.len() {
                if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if s[i] == 'r'
            && (i == 0 || !(s[i - 1].is_alphanumeric() || s[i - 1] == '_'))
            && matches!(s.get(i + 1), Some('"') | Some('#'))
        {
            // A raw string r"…", r#"…"#: ends at a quote followed by as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while s.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if s.get(j) != Some(&'"') {
                out.push(s[i]);
                i += 1;
                continue;
            }
            j += 1;
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while j < s.len() && !at(j, &close) {
                j += 1;
            }
            i = j + close.chars().count();
        } else if s[i] == '"' {
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if s[i] == '\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a), which is left alone.
            if s.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if s.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        } else {
            out.push(s[i]);
            i += 1;
            continue;
        }
        out.push(' ');
    }
    out
}
