//! Build script: embeds every built-in blueprint and plan file (`blueprints/**.yaml`)
//! into the binary as a sorted table of (relative path, text), so `nova` needs no
//! data files at run time and the catalog always matches the source tree.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = root.join("blueprints");
    println!("cargo:rerun-if-changed=blueprints");

    let mut files = Vec::new();
    collect_yaml(&dir, &mut files);
    files.sort();

    let mut out =
        String::from("/// Built-in blueprint and plan files: (path under `blueprints/`, text).\n");
    out.push_str("pub static FILES: &[(&str, &str)] = &[\n");
    for file in &files {
        let rel = file
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        writeln!(
            out,
            "    ({rel:?}, include_str!({:?})),",
            file.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");

    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_blueprints.rs");
    std::fs::write(dest, out).unwrap();
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}
