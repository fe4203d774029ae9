//! `tether-contracts`: writes the device protocol's contracts (JSON Schemas and the
//! AsyncAPI document) under `contracts/`, from `protocol`'s types.
//!
//! `cargo run -p contracts` rewrites them (and deletes schema files no message has any
//! more); `cargo run -p contracts -- --check` only says which differ, and fails if any
//! does.

use std::{fs, path::Path, process::ExitCode};

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("unknown argument {other:?}: use no argument to write, or --check");
            return ExitCode::from(2);
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match run(root, check) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(stale) => {
            eprintln!(
                "{stale} file(s) under contracts/ differ from the protocol's types: run `{}` to update them",
                contracts::REGENERATE
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!(
                "cannot write the contracts under {}: {error}",
                root.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Writes (or, with `check`, compares) every file; returns how many differed.
fn run(root: &Path, check: bool) -> std::io::Result<usize> {
    let files = contracts::files();
    let mut stale = 0;
    for file in &files {
        let path = root.join(&file.path);
        if fs::read_to_string(&path).ok().as_deref() == Some(file.contents.as_str()) {
            continue;
        }
        stale += 1;
        if check {
            eprintln!("differs: contracts/{}", file.path);
        } else {
            fs::create_dir_all(path.parent().expect("files are in a folder"))?;
            fs::write(&path, &file.contents)?;
            println!("wrote contracts/{}", file.path);
        }
    }
    let dir = root.join(contracts::SCHEMAS_DIR);
    if dir.is_dir() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let relative = format!(
                "{}/{}",
                contracts::SCHEMAS_DIR,
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            if files.iter().any(|file| file.path == relative) {
                continue;
            }
            stale += 1;
            if check {
                eprintln!("no longer generated: contracts/{relative}");
            } else {
                fs::remove_file(&path)?;
                println!("removed contracts/{relative}");
            }
        }
    }
    Ok(if check { stale } else { 0 })
}
