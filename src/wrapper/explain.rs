/*!
A key's inputs by name, for `kache why-miss` and the event log.

Every field that went into a key is turned into a readable line
(`arg -C opt-level`, `file src/lib.rs`, `env FOO`); values that could be
secrets (env values) are shown only by class.

A line's name is a name (a flag, a path, a variable), never a value: an
uploaded manifest carries the names in clear and every value only as a
keyed digest (`Entry::salt_values`), so `why-miss` can name what differs
without anything secret leaving the machine.
*/

use std::collections::BTreeMap;

/// Marks an unset env var (distinct from an empty one).
pub(crate) const UNSET: &str = "\u{0}unset";

/// A key's inputs by name (`arg -C opt-level`, `file src/lib.rs`,
/// `env FOO`, ...), each with a value or a digest; env values are shown
/// only by class (unset, empty, or set with a short digest), never as is.
pub(crate) type Explain = BTreeMap<String, String>;

fn short(v: &str) -> String {
    blake3::hash(v.as_bytes()).to_hex()[..12].to_string()
}

fn class(v: &str) -> String {
    match v {
        UNSET => "unset".to_string(),
        "" => "empty".to_string(),
        v => format!("set ({})", short(v)),
    }
}

/// Turns recorded key fields into an [`Explain`].
pub(crate) fn explain(fields: &[(String, String)]) -> Explain {
    let mut out = Explain::new();
    let mut put = |k: String, v: String| {
        let slot = out.entry(k).or_default();
        if !slot.is_empty() {
            slot.push_str("; ");
        }
        slot.push_str(&v);
    };
    let mut i = 0;
    while i < fields.len() {
        let (label, value) = (&fields[i].0, &fields[i].1);
        let next = fields.get(i + 1).map(|f| f.1.as_str()).unwrap_or_default();
        i += 1;
        match label.as_str() {
            "domain" | "base" => {}
            "file" | "link" => {
                put(
                    format!("{label} {value}"),
                    next.get(..12).unwrap_or(next).to_string(),
                );
                i += 1;
            }
            "env" | "rerun-if-env-changed" | "declared-env" => {
                put(format!("{label} {value}"), class(next));
                i += 1;
            }
            "root" | "absent" => {
                put(format!("{label} {value}"), next.to_string());
                i += 1;
            }
            "-C" | "-Z" => {
                let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                put(format!("arg {label} {k}"), v.to_string());
            }
            "--extern" | "static-lib" | "native" => {
                let (k, v) = value.split_once(['=', ':']).unwrap_or((value.as_str(), ""));
                put(format!("{label} {k}"), v.to_string());
            }
            l if l.starts_with("env:") => put(l.to_string(), value.clone()),
            l if l.starts_with('-') || l.is_empty() => {
                let name = if l.is_empty() { "input" } else { l };
                put(format!("arg {name}"), value.clone());
            }
            l => {
                let shown = if value.len() > 100 || value.contains('\n') {
                    let first = value.lines().next().unwrap_or_default();
                    let first: String = first.chars().take(80).collect();
                    format!("{first} ({})", short(value))
                } else {
                    value.clone()
                };
                put(l.to_string(), shown);
            }
        }
    }
    out
}
