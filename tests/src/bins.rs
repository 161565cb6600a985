//! Where the lab finds the programs it runs: `xdplb` and `fake-apiserver`
//! from this workspace's target directory.

use std::{env, path::PathBuf};

use anyhow::{Result, bail};

/// `$XDPLB_BIN_DIR/<name>` if set, else the target directory this process
/// runs from (`target/<profile>/` for xtask, `target/<profile>/deps/` for
/// test executables).
pub fn path(name: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(dir) = env::var_os("XDPLB_BIN_DIR") {
        tried.push(PathBuf::from(dir).join(name));
    }
    if let Ok(exe) = env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            tried.push(dir.join(name));
        }
    }
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    bail!("{name} not found (looked at {tried:?}); build it first: cargo xtask build")
}
