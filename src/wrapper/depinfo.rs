/*!
Make-style dependency files: rustc's dep-info (with its `# env-dep:`
lines), read to learn what a compile read.
*/

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
}
