//! Build script: compiles `proto/` into Rust (tonic and prost, with the vendored
//! `protoc`, so no system install is needed), and embeds every built-in
//! blueprint and plan file (`blueprints/**.yaml`) into the binary as a sorted
//! table of (relative path, text), and every file a plan's fixes use
//! (`blueprints/<plan>/assets/**`) as (plan folder, path, text), so `nova`
//! needs no data files at run time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    compile_protos();
    embed_blueprints();
}

fn compile_protos() {
    println!("cargo:rerun-if-changed=proto");
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var(
            "PROTOC",
            protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"),
        )
    };
    tonic_prost_build::configure()
        .compile_protos(&["proto/task_queue.proto"], &["proto"])
        .expect("compile proto/task_queue.proto");
    // The unmodified original proto, for the wire-compatibility test's client.
    println!("cargo:rerun-if-changed=tests/proto");
    let original = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("original");
    std::fs::create_dir_all(&original).unwrap();
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(original)
        .compile_protos(&["tests/proto/original_task_queue.proto"], &["tests/proto"])
        .expect("compile tests/proto/original_task_queue.proto");
}

fn embed_blueprints() {
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

    out.push_str("/// Files a plan's fixes use: (plan folder, path under its `assets/`, text).\n");
    out.push_str("pub static ASSETS: &[(&str, &str, &str)] = &[\n");
    let mut plans: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    plans.sort();
    for plan in plans.iter().filter(|p| p.join("assets").is_dir()) {
        let assets = plan.join("assets");
        let mut files = Vec::new();
        collect_files(&assets, &mut files);
        files.sort();
        let name = plan.file_name().unwrap().to_string_lossy();
        for file in &files {
            let rel = file
                .strip_prefix(&assets)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            writeln!(
                out,
                "    ({name:?}, {rel:?}, include_str!({:?})),",
                file.display().to_string()
            )
            .unwrap();
        }
    }
    out.push_str("];\n");

    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_blueprints.rs");
    std::fs::write(dest, out).unwrap();
}

/// Every file under `dir` but Python's caches.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if !path.ends_with("__pycache__") {
                collect_files(&path, files);
            }
        } else {
            files.push(path);
        }
    }
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // A plan's assets are files its fixes use, not blueprints.
        if path.is_dir() && !path.ends_with("assets") {
            collect_yaml(&path, files);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}
