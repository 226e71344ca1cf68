/*!
Make-style dependency files: rustc's dep-info (with its `# env-dep:`
lines), read to learn what a compile read; the values of its `# env-dep:`
lines keyed for an upload, and put back on a hit of a pulled entry.
*/

use crate::store::ids::Salt;

/// What a dep-info file says the compile read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DepInfo {
    pub(crate) files: Vec<String>,
    pub(crate) env: Vec<String>,
}

/// Splits a make rule's path list, honouring `\ ` escapes.
fn split_paths(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&' ') => {
                cur.push(' ');
                chars.next();
            }
            ' ' | '\t' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Finds the `: ` that ends a rule's target (not an escaped one).
pub(crate) fn rule_split(line: &str) -> Option<(&str, &str)> {
    let b = line.as_bytes();
    for i in 0..b.len() {
        let ends = b
            .get(i + 1)
            .is_none_or(|c| matches!(c, b' ' | b'\n' | b'\r'));
        if b[i] == b':' && ends && (i == 0 || b[i - 1] != b'\\') {
            return Some((&line[..i], &line[i + 1..]));
        }
    }
    None
}

/// Parses rustc's dep-info: the first rule's prerequisites and the
/// `# env-dep:` lines. Paths are returned as written (normalise them
/// afterwards).
pub(crate) fn parse_dep_info(text: &str) -> DepInfo {
    let mut d = DepInfo::default();
    let mut first = true;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# env-dep:") {
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if !d.env.iter().any(|e| e == name) {
                d.env.push(name.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if first && let Some((_, deps)) = rule_split(line) {
            d.files = split_paths(deps);
            first = false;
        }
    }
    d.files.sort();
    d.files.dedup();
    d.env.sort();
    d
}

/// A `# env-dep:` line: its variable, its value (`None`: unset), and its
/// line ending.
fn env_dep(line: &str) -> Option<(&str, Option<&str>, &str)> {
    let (body, end) = match line.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (line, ""),
    };
    let rest = body.strip_prefix("# env-dep:")?;
    Some(match rest.split_once('=') {
        Some((name, value)) => (name, Some(value), end),
        None => (rest, None, end),
    })
}

/// `text` with the value of every `# env-dep:` line replaced by
/// `value(name, value)`.
fn map_env_deps(text: &str, value: impl Fn(&str, Option<&str>) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let Some((name, old, end)) = env_dep(line) else {
            out.push_str(line);
            continue;
        };
        out.push_str("# env-dep:");
        out.push_str(name);
        if let Some(v) = value(name, old) {
            out.push('=');
            out.push_str(&v);
        }
        out.push_str(end);
    }
    out
}

/// Variables whose `# env-dep:` value an uploaded dep-info keeps in
/// clear: those cargo sets for a compile (the package's metadata, its own
/// paths). A kache that predates keyed values restores a pulled dep-info
/// as it is, and cargo compares these values with its own.
fn set_by_cargo(name: &str) -> bool {
    name == "OUT_DIR" || super::rustc::key::keyed_cargo_var(name)
}

/// The dep-info as uploaded: each `# env-dep:NAME=VALUE` line of a
/// variable cargo does not set (`env!("API_TOKEN")`) carries the keyed
/// digest of its value instead (see `Entry::salt_values`).
pub(crate) fn salt_env_values(text: &str, salt: &Salt) -> String {
    map_env_deps(text, |name, value| match value {
        Some(v) if !set_by_cargo(name) => Some(salt.digest(v)),
        v => v.map(str::to_string),
    })
}

/// A pulled dep-info (its values keyed) as rustc would have written it
/// here: every `# env-dep:` line with the value its variable has in this
/// environment (`var`), escaped as rustc escapes it. A hit's key covers
/// each of those values (`Inputs::env`), so they are the values the
/// stored compile read; cargo compares them with its own to tell whether
/// the crate is fresh.
pub(crate) fn env_values_back(text: &str, var: impl Fn(&str) -> Option<String>) -> String {
    map_env_deps(text, |name, _| {
        var(name).map(|v| {
            let mut e = String::with_capacity(v.len());
            for c in v.chars() {
                match c {
                    '\n' => e.push_str("\\n"),
                    '\r' => e.push_str("\\r"),
                    '\\' => e.push_str("\\\\"),
                    c => e.push(c),
                }
            }
            e
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_parse() {
        let text = "/t/deps/foo-1.d: src/lib.rs src/a\\ b.rs /t/build/x/out/gen.rs\n\n\
            /t/deps/libfoo-1.rlib: src/lib.rs src/a\\ b.rs /t/build/x/out/gen.rs\n\n\
            src/lib.rs:\nsrc/a\\ b.rs:\n\n# env-dep:FOO=bar\n# env-dep:UNSET_ONE\n# env-dep:OUT_DIR=/t/build/x/out\n";
        let d = parse_dep_info(text);
        assert_eq!(
            d.files,
            vec!["/t/build/x/out/gen.rs", "src/a b.rs", "src/lib.rs"]
        );
        assert_eq!(d.env, vec!["FOO", "OUT_DIR", "UNSET_ONE"]);
    }

    /// Issue 23: an uploaded dep-info holds no value of a variable cargo
    /// does not set; a hit of the pulled entry writes this environment's.
    #[test]
    fn env_values_keyed_for_upload_and_put_back() {
        let text = "/t/deps/foo-1.d: src/lib.rs\n\nsrc/lib.rs:\n\n# env-dep:API_TOKEN=hunter2\n\
            # env-dep:UNSET_ONE\n# env-dep:CARGO_PKG_VERSION=1.2.3\n# env-dep:OUT_DIR=/kache-target/o\n\
            # env-dep:MULTI=a\\nb";
        let salt = Salt::random().unwrap();
        let up = salt_env_values(text, &salt);
        assert!(!up.contains("hunter2"), "{up}");
        assert!(!up.contains("a\\nb"), "{up}");
        assert!(up.contains(&format!("# env-dep:API_TOKEN={}\n", salt.digest("hunter2"))));
        assert!(up.contains("# env-dep:UNSET_ONE\n"));
        assert!(up.contains("# env-dep:CARGO_PKG_VERSION=1.2.3\n"));
        assert!(up.contains("# env-dep:OUT_DIR=/kache-target/o\n"));
        assert_eq!(parse_dep_info(&up), parse_dep_info(text));
        let here = |name: &str| match name {
            "API_TOKEN" => Some("hunter2".to_string()),
            "CARGO_PKG_VERSION" => Some("1.2.3".to_string()),
            "OUT_DIR" => Some("/kache-target/o".to_string()),
            "MULTI" => Some("a\nb".to_string()),
            _ => None,
        };
        assert_eq!(env_values_back(&up, here), text);
    }
}
