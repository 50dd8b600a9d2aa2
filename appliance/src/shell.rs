//! Commands for a host's POSIX shell, built here: every word the appliance puts in a script is
//! quoted by shlex, in one place.

/// `s` as one word of a POSIX shell command. A NUL cannot be passed to a command at all; none
/// of what the appliance quotes (names, paths, URLs, file contents it checked) holds one, and
/// one that did would be dropped rather than cut the word short.
pub fn quote(s: &str) -> String {
    match shlex::try_quote(s) {
        Ok(q) => q.into_owned(),
        Err(_) => quote(&s.replace('\0', "")),
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn a_quoted_word_is_one_word_as_the_shell_reads_it() {
        for s in [
            "plain",
            "",
            "it's",
            "a b\nc",
            "$(rm -rf /)",
            "`x`;|&<>*?\"\\",
        ] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf '%s' {}", quote(s))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s, "{s:?}");
        }
        assert_eq!(quote("a\0b"), "ab");
    }
}
