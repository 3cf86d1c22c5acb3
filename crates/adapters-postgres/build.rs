//! Rebuilds the crate when a migration is added, not only when an embedded one changes, and
//! fingerprints the migrations so test servers keep one migrated template per version of them.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::Path;

const MIGRATIONS: &str = "../../migrations/postgres";

fn main() {
    println!("cargo:rerun-if-changed={MIGRATIONS}");
    let mut files = Vec::new();
    collect(Path::new(MIGRATIONS), &mut files);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        hasher.write(file.to_string_lossy().as_bytes());
        hasher.write(&std::fs::read(&file).unwrap_or_default());
    }
    println!("cargo:rustc-env=RDEV_PG_MIGRATIONS_FINGERPRINT={:016x}", hasher.finish());
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}
