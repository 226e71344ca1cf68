/*!
The glob matcher of declared inputs (`files = ["templates/**/*.html"]`).

Pure: a pattern and a relative, `/`-separated path in, a yes or no out.
`*` and `?` stay within one path component, `**` spans whole components.
*/

/// Whether `path` (relative, `/`-separated) matches `pattern`: `*` and
/// `?` match within one path component, `**` matches any number of whole
/// components (none included). Everything else matches itself.
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match_components(&pat, &comps)
}

fn match_components(pat: &[&str], comps: &[&str]) -> bool {
    match pat.split_first() {
        None => comps.is_empty(),
        Some((&"**", rest)) => (0..=comps.len()).any(|i| match_components(rest, &comps[i..])),
        Some((p, rest)) => match comps.split_first() {
            Some((c, crest)) => {
                match_one(p.as_bytes(), c.as_bytes()) && match_components(rest, crest)
            }
            None => false,
        },
    }
}

/// `*` and `?` within one component (bytes; `?` is one byte).
fn match_one(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("migrations/*.sql", "migrations/001_init.sql"));
        assert!(!glob_match("migrations/*.sql", "migrations/sub/001.sql"));
        assert!(!glob_match("migrations/*.sql", "migrations/001.sqlx"));
        assert!(glob_match("templates/**/*.html", "templates/a.html"));
        assert!(glob_match("templates/**/*.html", "templates/a/b/c.html"));
        assert!(!glob_match("templates/**/*.html", "templates/a/b/c.htm"));
        assert!(glob_match("**", "a/b/c"));
        assert!(glob_match("**", ""));
        assert!(glob_match("a/**", "a/b"));
        assert!(glob_match("a/**", "a"));
        assert!(glob_match("?.rs", "a.rs"));
        assert!(!glob_match("?.rs", "ab.rs"));
        assert!(!glob_match("?.rs", "/.rs"));
        assert!(glob_match("*", "build.rs"));
        assert!(!glob_match("*", "src/lib.rs"));
        assert!(glob_match("src/*b*.rs", "src/lib.rs"));
        assert!(glob_match("./src//lib.rs", "src/lib.rs"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("schema.graphql", "schema.graphql"));
        assert!(!glob_match("schema.graphql", "other.graphql"));
        assert!(glob_match("**/x/**/y", "x/y"));
        assert!(glob_match("**/x/**/y", "p/x/q/r/y"));
        assert!(!glob_match("**/x/**/y", "p/q/r/y"));
    }
}
