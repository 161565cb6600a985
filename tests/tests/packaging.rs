//! The packaged systemd unit is one systemd accepts, with the binary this
//! workspace builds in place of /usr/local/bin/xdplb.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/xdplb.service"
    ))
    .expect("reading packaging/xdplb.service");
    let bin = lab::bins::path("xdplb").expect("the xdplb binary (cargo xtask build)");
    let dir = std::env::temp_dir().join(format!("xdplb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xdplb.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/xdplb", &bin.to_string_lossy()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("running systemd-analyze (systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify must accept the unit without a word, said ({}): {text}",
        out.status
    );
}
