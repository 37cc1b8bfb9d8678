//! `scripts/package.sh` builds a Debian package of this binary: the binary, a sandboxed systemd
//! unit that reloads on SIGHUP, man pages and shell completions. Its contents are checked with
//! `dpkg-deb`, and the unit with `systemd-analyze verify`.

use std::path::Path;
use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tool(name: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is missing: apt-get install {package} (scripts/setup.sh does)"
    );
}

#[test]
fn the_deb_holds_binary_unit_man_pages_and_completions() {
    tool("dpkg-deb", "dpkg");
    tool("systemd-analyze", "systemd");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().expect("tempdir");
    let o = Command::new(root.join("scripts/package.sh"))
        .env("PARAPET_BIN", env!("CARGO_BIN_EXE_parapet"))
        .env("PARAPET_DEB_DIR", out.path())
        .output()
        .expect("run scripts/package.sh");
    assert!(o.status.success(), "package.sh: {}", text(&o.stderr));
    let deb = text(&o.stdout).trim().to_string();
    let name = Path::new(&deb)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a .deb path")
        .to_string();
    assert!(
        name.starts_with("parapet_") && name.ends_with(".deb") && name.matches('_').count() == 2,
        "{name}"
    );
    let list = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .expect("dpkg-deb -c");
    let list = text(&list.stdout);
    for path in [
        "./usr/bin/parapet",
        "./lib/systemd/system/parapet.service",
        "./usr/share/man/man1/parapet.1.gz",
        "./usr/share/man/man1/parapet-serve.1.gz",
        "./usr/share/man/man1/parapet-init.1.gz",
        "./usr/share/man/man1/parapet-doctor.1.gz",
        "./usr/share/bash-completion/completions/parapet",
        "./usr/share/zsh/vendor-completions/_parapet",
        "./usr/share/fish/vendor_completions.d/parapet.fish",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{list}"
        );
    }
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .expect("dpkg-deb -I");
    let info = text(&info.stdout);
    assert!(
        info.contains("Package: parapet") && info.contains("postinst"),
        "{info}"
    );

    // The unit: it runs serve on /etc/parapet, sandboxed, and reloads with SIGHUP.
    let x = tempfile::tempdir().expect("tempdir");
    let ok = Command::new("dpkg-deb")
        .args(["-x", &deb])
        .arg(x.path())
        .status()
        .expect("dpkg-deb -x")
        .success();
    assert!(ok);
    let unit =
        std::fs::read_to_string(x.path().join("lib/systemd/system/parapet.service")).expect("unit");
    for line in [
        "ExecStart=/usr/bin/parapet serve --config /etc/parapet/parapet.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=parapet",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/parapet",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit:\n{unit}");
    }
    // systemd-analyze checks the unit's syntax and that its commands exist: point it at the
    // packaged binary.
    let bin = x.path().join("usr/bin/parapet");
    let local = x.path().join("parapet.service");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/parapet", &bin.display().to_string()),
    )
    .expect("write unit");
    let v = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&local)
        .output()
        .expect("systemd-analyze");
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&v.stderr)
    );
    // The packaged binary runs and knows the commands the unit and the docs use.
    let help = Command::new(&bin)
        .arg("--help")
        .output()
        .expect("run packaged binary");
    let help = text(&help.stdout);
    for cmd in ["serve", "init", "doctor", "verify"] {
        assert!(help.contains(cmd), "{help}");
    }
}
