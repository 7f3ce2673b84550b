//! Test certificates made with the `openssl` command: a CA, and server and client certificates
//! it signs (P-256 keys, valid for two days).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("the openssl command runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// A self-signed CA called `name`, in `dir/name.{pem,key}`.
pub fn ca(dir: &Path, name: &str) -> Pem {
    let pem = Pem { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        path(&pem.key),
        "-out",
        path(&pem.cert),
        "-subj",
        &format!("/O=Test/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    pem
}

/// A certificate for `cn` signed by `ca`: a server's (for 127.0.0.1 and localhost) or a client's.
pub fn leaf(dir: &Path, ca: &Pem, name: &str, cn: &str, server: bool) -> Pem {
    let usage = if server {
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(&ext, format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{usage}"))
        .unwrap();
    signed(dir, ca, name, cn, Some(&ext))
}

/// A server's certificate signed by `ca` that names only `san` (`DNS:db.example`).
pub fn server_named(dir: &Path, ca: &Pem, name: &str, san: &str) -> Pem {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n"),
    )
    .unwrap();
    signed(dir, ca, name, "server", Some(&ext))
}

/// An X.509 v1 certificate for `cn` signed by `ca`: what `openssl x509 -req` makes without
/// `-extfile`, as integrators often do.
pub fn leaf_v1(dir: &Path, ca: &Pem, name: &str, cn: &str) -> Pem {
    signed(dir, ca, name, cn, None)
}

/// A new key and a certificate for it signed by `ca`, with the extensions in `ext` (none: v1).
fn signed(dir: &Path, ca: &Pem, name: &str, cn: &str, ext: Option<&Path>) -> Pem {
    let pem = Pem { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) };
    let csr = dir.join(format!("{name}.csr"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        path(&pem.key),
        "-out",
        path(&csr),
        "-subj",
        &format!("/O=Test/CN={cn}"),
    ]);
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(&ca.cert),
        "-CAkey",
        path(&ca.key),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        path(&pem.cert),
    ];
    if let Some(ext) = ext {
        args.extend(["-extfile", path(ext)]);
    }
    openssl(&args);
    pem
}
