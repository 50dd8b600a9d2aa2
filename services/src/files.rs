//! Read-only files served from one directory (TFTP and HTTP boot files): what a requested
//! name stands for, and never anything outside the directory.

use std::path::{Path, PathBuf};

/// Why a name is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such file (or not a regular file).
    Missing(&'static str),
    /// The name leads out of the directory.
    Escape,
}

impl Refusal {
    pub fn why(self) -> &'static str {
        match self {
            Refusal::Missing(why) => why,
            Refusal::Escape => "path leads out of the boot directory",
        }
    }
}

/// The file `name` stands for under `root` (canonical), or why there is none. Leading slashes
/// are dropped and `\` is read as `/` (what some firmware sends); `..` anywhere is refused,
/// and a symbolic link may lead only to somewhere under `root`.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let name = name.replace('\\', "/");
    let rel = name.trim_start_matches('/');
    if rel.contains('\0') || rel.split('/').any(|c| c == "..") {
        return Err(Refusal::Escape);
    }
    let real = root
        .join(rel)
        .canonicalize()
        .map_err(|_| Refusal::Missing("file not found"))?;
    if !real.starts_with(root) {
        return Err(Refusal::Escape);
    }
    if !real.is_file() {
        return Err(Refusal::Missing("not a file"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("boot");
        std::fs::create_dir_all(root.join("efi")).unwrap();
        let root = root.canonicalize().unwrap();
        std::fs::write(root.join("efi/ipxe.efi"), "x").unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink("efi/ipxe.efi", root.join("alias")).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        let ok = |n: &str| resolve(&root, n).unwrap();
        assert_eq!(ok("efi/ipxe.efi"), root.join("efi/ipxe.efi"));
        assert_eq!(ok("//efi\\ipxe.efi"), root.join("efi/ipxe.efi"));
        assert_eq!(
            ok("alias"),
            root.join("efi/ipxe.efi"),
            "a link inside is fine"
        );
        for bad in ["efi/..", "../secret", "out", "efi/../../secret"] {
            assert_eq!(resolve(&root, bad), Err(Refusal::Escape), "{bad}");
        }
        assert_eq!(resolve(&root, "efi"), Err(Refusal::Missing("not a file")));
        assert_eq!(
            resolve(&root, "nope"),
            Err(Refusal::Missing("file not found"))
        );
    }
}
