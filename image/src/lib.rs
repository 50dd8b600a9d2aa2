//! netmigrate's image store: one directory per VM, one file per generation, atomic publish,
//! SHA-256 computed while streaming, and a reader that may follow a writer still uploading.
//! Not built yet; it arrives with the image-store issue.
