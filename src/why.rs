/*!
`kache why-miss CRATE`: why did the last compile of a crate miss?

Every stored miss logs the inputs of its key by name (`wrapper::explain::
Explain`) in the event log, and every entry keeps the same account in its
manifest. This command takes the crate's last logged miss, finds the
stored entry of the same crate whose inputs differ least from it, and
names the inputs that differ, so a user can tell a genuine change (a
source edit) from a key that is too strict (a variable that should not
matter).
*/

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::json;

use crate::cli::WhyMissCmd;
use crate::config::Config;
use crate::store::events::{self, Event, Outcome};
use crate::store::ids::Salt;
use crate::store::{CrateName, Entry, Store, normalize_crate};

/// One input that differs between the miss and the nearest entry.
struct Difference {
    input: String,
    miss: Option<String>,
    entry: Option<String>,
    /// The entry's value is a keyed digest (an uploaded manifest, see
    /// `Entry::salt`), never shown as a value.
    keyed: bool,
}

/// Whether the miss's value of an input is the entry's. The values of
/// an entry with a salt (pulled) are keyed digests: the miss's value is
/// keyed with that salt before it is compared.
fn same(salt: Option<&Salt>, miss: Option<&String>, entry: Option<&String>) -> bool {
    match (salt, miss, entry) {
        (Some(s), Some(m), Some(e)) => s.digest(m) == *e,
        _ => miss == entry,
    }
}

fn differences(
    miss: &BTreeMap<String, String>,
    entry: &BTreeMap<String, String>,
    salt: Option<&Salt>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for name in miss
        .keys()
        .chain(entry.keys().filter(|k| !miss.contains_key(*k)))
    {
        let (a, b) = (miss.get(name), entry.get(name));
        if !same(salt, a, b) {
            out.push(Difference {
                input: name.clone(),
                miss: a.cloned(),
                entry: b.filter(|_| salt.is_none()).cloned(),
                keyed: salt.is_some() && b.is_some(),
            });
        }
    }
    out
}

/// What kind of change a difference is, for the summary line.
fn kind(input: &str) -> &'static str {
    let first = input.split(' ').next().unwrap_or_default();
    match first {
        "file" | "link" | "native" | "static-lib" | "--extern" | "rerun-if-changed"
        | "declared-file" | "content" => "a source or link input",
        "toolchain" | "compiler-name" | "linker" | "linker-version" | "native-cpu" => {
            "the toolchain"
        }
        "arg" | "--cfg" | "--check-cfg" | "target" | "target-json" => "an argument",
        "root" => "a machine-local path baked into the output",
        _ if first.starts_with("env") || first.ends_with("-env") => "an environment variable",
        _ => "another input",
    }
}

/// The last logged outcome of `crate_name` that explains a miss: a
/// miss that recorded its inputs, or a compile passed through uncached
/// with its reason.
fn last_miss(store: &Store, crate_name: &str) -> Option<Event> {
    let lines = events::read(store, |l| {
        l.contains("\"miss\"") || l.contains("\"passthrough\"")
    });
    lines.into_iter().rev().find(|v| {
        v.crate_name == crate_name
            && match v.result {
                Outcome::Miss => v.inputs.is_some(),
                Outcome::Passthrough => v.reason.is_some(),
                _ => false,
            }
    })
}

/// Prints why a compile was passed through uncached.
fn passed_through(name: &str, ev: &Event, json_out: bool) -> Result<ExitCode> {
    let reason = ev.reason.as_deref().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if json_out {
        let v = json!({
            "crate": name,
            "passthrough": {"ts": ev.ts, "reason": reason},
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "last compile of {name} was not cached: {reason}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The key inputs that name a compile's target within its package.
const SAME_TARGET: [&str; 4] = [
    "arg --crate-name",
    "arg --crate-type",
    "arg input",
    "arg --test",
];

/// The stored entry of `name` whose key inputs differ least from those
/// of a logged miss, with the differences.
fn nearest(store: &Store, name: &str, miss: &Event) -> Result<Option<(Entry, Vec<Difference>)>> {
    let miss_key = miss.key.as_str();
    let empty = BTreeMap::new();
    let miss_inputs = miss.inputs.as_ref().unwrap_or(&empty);
    let mut best: Option<(Entry, Vec<Difference>)> = None;
    let Some(crate_name) = CrateName::normalize(name) else {
        return Ok(None);
    };
    for r in store.list_crate(&crate_name)? {
        if r.key == miss_key {
            continue;
        }
        let Ok(Some(e)) = store.get(&crate_name, &r.key) else {
            continue;
        };
        // Only an entry of the same target (library, binary, test of
        // the package) can tell what changed.
        // A C miss is explained by C entries, a Rust miss by Rust ones.
        if e.explain.is_empty()
            || e.lang != miss.lang
            || SAME_TARGET
                .iter()
                .any(|k| !same(e.salt.as_ref(), miss_inputs.get(*k), e.explain.get(*k)))
        {
            continue;
        }
        let d = differences(miss_inputs, &e.explain, e.salt.as_ref());
        let better = best.as_ref().is_none_or(|(be, bd)| {
            d.len() < bd.len() || (d.len() == bd.len() && e.created > be.created)
        });
        if better {
            best = Some((e, d));
        }
    }
    Ok(best)
}

/// One line on why a logged miss or pass-through was not a hit, for
/// `kache stats --markdown`.
pub(crate) fn reason(store: &Store, ev: &Event) -> String {
    if ev.result == Outcome::Passthrough {
        return format!(
            "not cached: {}",
            ev.reason.as_deref().unwrap_or("passed through")
        );
    }
    let name = ev.crate_name.as_str();
    match nearest(store, name, ev) {
        Ok(Some((_, d))) if !d.is_empty() => {
            let mut kinds: Vec<&str> = d.iter().map(|x| kind(&x.input)).collect();
            kinds.sort_unstable();
            kinds.dedup();
            format!("changed: {} (`{}`)", kinds.join(", "), d[0].input)
        }
        Ok(Some(_)) => "an entry with the same inputs was stored meanwhile".to_string(),
        Ok(None) | Err(_) => "first compile here".to_string(),
    }
}

pub(crate) fn why_miss(cfg: &Config, c: &WhyMissCmd) -> Result<ExitCode> {
    let store = Store::at(&cfg.cache_dir.value);
    let name = normalize_crate(&c.crate_name);
    let Some(miss) = last_miss(&store, &name) else {
        bail!(
            "no recorded miss of crate {name} in {}; hint: build it once with kache as RUSTC_WRAPPER, then ask again",
            store.events_path().display()
        );
    };
    if miss.result == Outcome::Passthrough {
        return passed_through(&name, &miss, c.json);
    }
    let miss_key = miss.key.clone();
    let best = nearest(&store, &name, &miss)?;
    let short = |k: &str| k.get(..12).unwrap_or(k).to_string();
    if c.json {
        let nearest = best.as_ref().map(|(e, d)| {
            json!({
                "key": e.key,
                "created": e.created,
                "differences": d.iter().map(|x| json!({
                    "input": x.input,
                    "kind": kind(&x.input),
                    "miss": x.miss,
                    "entry": x.entry,
                    "entry_keyed": x.keyed,
                })).collect::<Vec<_>>(),
            })
        });
        let v = json!({
            "crate": name,
            "miss": {"ts": miss.ts, "key": miss_key},
            "nearest": nearest,
        });
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&v)?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "last miss of {name}: key {}", short(&miss_key))?;
    let Some((e, d)) = best else {
        writeln!(
            out,
            "no other entry of {name} is stored: this was its first compile here (or the store was purged or evicted)"
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    writeln!(
        out,
        "nearest stored entry: key {} ({} {})",
        short(&e.key),
        d.len(),
        if d.len() == 1 {
            "input differs"
        } else {
            "inputs differ"
        }
    )?;
    let mut kinds: Vec<&str> = d.iter().map(|x| kind(&x.input)).collect();
    kinds.sort_unstable();
    kinds.dedup();
    if !kinds.is_empty() {
        writeln!(out, "changed: {}", kinds.join(", "))?;
    }
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".to_string());
    for x in &d {
        writeln!(out, "  {}", x.input)?;
        writeln!(out, "    this miss:  {}", shown(&x.miss))?;
        if x.keyed {
            writeln!(
                out,
                "    that entry: another value (an uploaded manifest holds only a keyed digest of it)"
            )?;
        } else {
            writeln!(out, "    that entry: {}", shown(&x.entry))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_changed_added_and_removed_inputs() {
        let m = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(k, x)| (k.to_string(), x.to_string()))
                .collect()
        };
        let miss = m(&[
            ("file src/lib.rs", "aa"),
            ("toolchain", "t1"),
            ("env:X", "1"),
        ]);
        let entry = m(&[
            ("file src/lib.rs", "bb"),
            ("toolchain", "t1"),
            ("arg --cfg", "x"),
        ]);
        let d = differences(&miss, &entry, None);
        let names: Vec<&str> = d.iter().map(|x| x.input.as_str()).collect();
        assert_eq!(names, ["env:X", "file src/lib.rs", "arg --cfg"]);
        assert_eq!(d[0].entry, None);
        assert_eq!(d[2].miss, None);
        assert!(d.iter().all(|x| !x.keyed));
        assert_eq!(kind("file src/lib.rs"), "a source or link input");
        assert_eq!(kind("toolchain"), "the toolchain");
        assert_eq!(kind("arg --cfg"), "an argument");
        assert_eq!(kind("env:X"), "an environment variable");
        assert_eq!(
            kind("root /kache-ws"),
            "a machine-local path baked into the output"
        );
    }

    /// Issue 23: a pulled entry's values are keyed digests. The miss's
    /// values are keyed with its salt before they are compared (in the
    /// target filter too), and a difference names the input without
    /// showing a digest as the entry's value.
    #[test]
    fn a_pulled_entry_is_compared_under_its_salt() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("s")).unwrap();
        let mut inputs: BTreeMap<String, String> = [
            ("arg --crate-name", "foo"),
            ("arg --crate-type", "lib"),
            ("arg input", "src/lib.rs"),
            ("arg -D SECRET_TOKEN", "hunter2"),
            ("toolchain", "t1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut e = Entry::new(
            crate::store::ids::test::krate("foo"),
            crate::store::ids::test::key(&"1".repeat(64)),
            Vec::new(),
        );
        e.explain = inputs.clone();
        e.salt_values().unwrap();
        store.publish(&e).unwrap();
        let miss = |inputs: &BTreeMap<String, String>| -> Event {
            serde_json::from_value(json!({
                "crate": "foo", "result": "miss", "key": "2".repeat(64), "inputs": inputs,
            }))
            .unwrap()
        };
        let (got, diff) = nearest(&store, "foo", &miss(&inputs)).unwrap().unwrap();
        assert_eq!(got.key, e.key);
        assert!(diff.is_empty(), "same values, keyed alike");
        inputs.insert("arg -D SECRET_TOKEN".into(), "other".into());
        inputs.insert("arg -O2".into(), String::new());
        let (_, diff) = nearest(&store, "foo", &miss(&inputs)).unwrap().unwrap();
        let names: Vec<&str> = diff.iter().map(|x| x.input.as_str()).collect();
        assert_eq!(names, ["arg -D SECRET_TOKEN", "arg -O2"]);
        assert_eq!(diff[0].miss.as_deref(), Some("other"));
        assert_eq!(diff[0].entry, None);
        assert!(diff[0].keyed);
        // Absent from the entry: absent, not keyed.
        assert_eq!((diff[1].entry.as_ref(), diff[1].keyed), (None, false));
        // Another target of the package explains nothing.
        inputs.insert("arg --crate-type".into(), "bin".into());
        assert!(nearest(&store, "foo", &miss(&inputs)).unwrap().is_none());
    }
}
