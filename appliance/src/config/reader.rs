//! A span-keeping reader over a parsed TOML document.
//!
//! serde stops at the first error; an operator fixing a config wants all of them at once, each
//! with its line. So the config is read by hand from toml's spanned tree: every accessor records
//! a problem and carries on, and `finish` reports the keys nobody asked for.

use std::cell::Cell;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use super::ConfigError;

/// Collects every problem found in one file, with line numbers.
pub struct Problems<'s> {
    file: PathBuf,
    src: &'s str,
    pub list: Vec<ConfigError>,
}

impl<'s> Problems<'s> {
    pub fn new(file: &Path, src: &'s str) -> Self {
        Problems {
            file: file.to_path_buf(),
            src,
            list: Vec::new(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub fn at(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let line = self.line_of(span.start);
        self.at_line(line, key, message);
    }

    pub fn at_line(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// One TOML table being read; remembers which keys were read so the rest can be reported.
pub struct Table<'a, 'i> {
    pub path: String,
    pub span: Range<usize>,
    entries: Vec<Entry<'a, 'i>>,
}

/// A key, its value, and whether anyone read it.
type Entry<'a, 'i> = (
    &'a Spanned<DeString<'i>>,
    &'a Spanned<DeValue<'i>>,
    Cell<bool>,
);

/// An array's items, each with its key path (`key[i]`).
pub type Items<'a, 'i> = Vec<(String, &'a Spanned<DeValue<'i>>)>;

/// A value with the key path and span it came from, for later cross-checks.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub key: String,
    pub span: Range<usize>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn new(path: &str, span: Range<usize>, table: &'a DeTable<'i>) -> Self {
        Table {
            path: path.to_string(),
            span,
            entries: table
                .iter()
                .map(|(k, v)| (k, v, Cell::new(false)))
                .collect(),
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// The raw value under `key`, marking it as known.
    pub fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.entries
            .iter()
            .find(|(k, _, _)| k.get_ref() == key)
            .map(|(_, v, used)| {
                used.set(true);
                *v
            })
    }

    fn typed<T>(
        &self,
        p: &mut Problems,
        key: &str,
        want: &str,
        conv: impl FnOnce(&'a DeValue<'i>) -> Option<T>,
    ) -> Option<Located<T>> {
        let v = self.get(key)?;
        let path = self.key_path(key);
        match conv(v.get_ref()) {
            Some(value) => Some(Located {
                value,
                key: path,
                span: v.span(),
            }),
            None => {
                p.at(
                    &v.span(),
                    &path,
                    format!("expected {want}, found {}", v.get_ref().type_str()),
                );
                None
            }
        }
    }

    pub fn string(&self, p: &mut Problems, key: &str) -> Option<Located<String>> {
        self.typed(p, key, "a string", |v| v.as_str().map(str::to_string))
    }

    pub fn boolean(&self, p: &mut Problems, key: &str) -> Option<Located<bool>> {
        self.typed(p, key, "true or false", |v| v.as_bool())
    }

    pub fn integer(&self, p: &mut Problems, key: &str) -> Option<Located<i64>> {
        self.typed(p, key, "an integer", |v| {
            v.as_integer()
                .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok())
        })
    }

    /// A string turned into `T` by `f`; `f`'s message is reported at the value.
    pub fn parse<T>(
        &self,
        p: &mut Problems,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<(T, Range<usize>)> {
        let v = self.string(p, key);
        check(p, v, f)
    }

    /// An integer within `range`; one outside is reported with `hint(value)` and None returned.
    pub fn integer_in(
        &self,
        p: &mut Problems,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        hint: impl FnOnce(i64) -> String,
    ) -> Option<i64> {
        let v = self.integer(p, key)?;
        if range.contains(&v.value) {
            Some(v.value)
        } else {
            p.at(&v.span, &v.key, hint(v.value));
            None
        }
    }

    /// A duration within `range`; one outside is reported with `hint` and None returned.
    pub fn duration_in(
        &self,
        p: &mut Problems,
        key: &str,
        range: std::ops::RangeInclusive<std::time::Duration>,
        hint: &str,
    ) -> Option<std::time::Duration> {
        let (d, span) = self.parse(p, key, super::values::parse_duration)?;
        if range.contains(&d) {
            Some(d)
        } else {
            p.at(&span, &self.key_path(key), hint);
            None
        }
    }

    /// A required string; a missing one is reported with `hint` saying what to write.
    pub fn required_string(
        &self,
        p: &mut Problems,
        key: &str,
        hint: &str,
    ) -> Option<Located<String>> {
        if self.get(key).is_none() {
            p.at(&self.span, &self.key_path(key), format!("missing; {hint}"));
            return None;
        }
        self.string(p, key)
    }

    /// An array of values, each handed to `item` with its own key path (`key[i]`).
    pub fn array(&self, p: &mut Problems, key: &str) -> Option<Located<Items<'a, 'i>>> {
        let path = self.key_path(key);
        self.typed(p, key, "an array", |v| {
            v.as_array().map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, item)| (format!("{path}[{i}]"), item))
                    .collect()
            })
        })
    }

    /// An array of strings.
    pub fn strings(&self, p: &mut Problems, key: &str) -> Option<Vec<Located<String>>> {
        let items = self.array(p, key)?;
        let mut out = Vec::new();
        for (path, item) in items.value {
            match item.get_ref().as_str() {
                Some(s) => out.push(Located {
                    value: s.to_string(),
                    key: path,
                    span: item.span(),
                }),
                None => p.at(
                    &item.span(),
                    &path,
                    format!("expected a string, found {}", item.get_ref().type_str()),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table (`[dns]`), or None when absent or of the wrong type (reported).
    pub fn table(&self, p: &mut Problems, key: &str) -> Option<Table<'a, 'i>> {
        let v = self.get(key)?;
        let path = self.key_path(key);
        match v.get_ref().as_table() {
            Some(t) => Some(Table::new(&path, v.span(), t)),
            None => {
                p.at(
                    &v.span(),
                    &path,
                    format!(
                        "expected a table ([{path}]), found {}",
                        v.get_ref().type_str()
                    ),
                );
                None
            }
        }
    }

    /// An array of tables (`[[network]]`), each with its indexed path (`network[0]`).
    pub fn tables(&self, p: &mut Problems, key: &str) -> Vec<Table<'a, 'i>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        let Some(items) = v.get_ref().as_array() else {
            p.at(
                &v.span(),
                &path,
                format!(
                    "expected one or more [[{path}]] tables, found {}",
                    v.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            match item.get_ref().as_table() {
                Some(t) => out.push(Table::new(&ipath, item.span(), t)),
                None => p.at(
                    &item.span(),
                    &ipath,
                    format!("expected a table, found {}", item.get_ref().type_str()),
                ),
            }
        }
        out
    }

    /// Reports every key that no accessor asked for, suggesting the nearest known one.
    pub fn finish(self, p: &mut Problems, known: &[&str]) {
        for (k, _, used) in &self.entries {
            if used.get() {
                continue;
            }
            let name = k.get_ref().as_ref();
            let mut msg = format!("unknown key `{name}`");
            match nearest(name, known) {
                Some(s) => msg.push_str(&format!("; did you mean `{s}`?")),
                None => msg.push_str(&format!(
                    "; known keys here: {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
            p.at(&k.span(), &self.key_path(name), msg);
        }
    }
}

/// Applies `f` to a read string, reporting its message at the value.
pub fn check<T>(
    p: &mut Problems,
    v: Option<Located<String>>,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Option<(T, Range<usize>)> {
    let v = v?;
    match f(&v.value) {
        Ok(x) => Some((x, v.span)),
        Err(m) => {
            p.at(&v.span, &v.key, m);
            None
        }
    }
}

/// The known key closest to `name` by edit distance, if it is a plausible typo.
fn nearest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_keys_only() {
        assert_eq!(nearest("adress", &["address", "name"]), Some("address"));
        assert_eq!(
            nearest("dhcp_rnage", &["dhcp_range", "domain"]),
            Some("dhcp_range")
        );
        assert_eq!(nearest("colour", &["address", "name"]), None);
    }

    #[test]
    fn lines_are_one_based() {
        let src = "a = 1\nb = 2\n";
        let p = Problems::new(Path::new("x.toml"), src);
        assert_eq!(p.line_of(0), 1);
        assert_eq!(p.line_of(6), 2);
    }
}
