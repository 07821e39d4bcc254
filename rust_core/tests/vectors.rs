//! Runs every vector in `spec/vectors/` through the Rust reader and checks the expected class.

use std::path::PathBuf;

use enctensor_core::header;
use enctensor_core::reader::DEFAULT_MAX_SCRYPT_LOG_N;
use enctensor_core::{Credential, Error, Reader};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors")
}

/// PEM to DER (the test RSA key is a PKCS#8 "PRIVATE KEY" block).
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn credential(meta: &Value) -> Result<Credential, Error> {
    if let Some(k) = meta.get("key") {
        return Credential::key(&hex::decode(k.as_str().unwrap()).unwrap());
    }
    if let Some(p) = meta.get("passphrase") {
        return Credential::passphrase(p.as_str().unwrap());
    }
    if let Some(id) = meta.get("identity") {
        return match id["type"].as_str().unwrap() {
            "x25519" => Credential::x25519(&hex::decode(id["private"].as_str().unwrap()).unwrap()),
            "rsa" => Credential::rsa_pkcs8(&pem_der(id["private_pem"].as_str().unwrap())),
            other => panic!("unknown identity type {other}"),
        };
    }
    Credential::key(&[0u8; 32])
}

/// The credential, verification key and scrypt cap a vector is opened with.
fn open_args(meta: &Value) -> Result<(Credential, Option<Vec<u8>>, u8), Error> {
    let verify = meta
        .get("verify_key")
        .map(|v| hex::decode(v.as_str().unwrap()).unwrap());
    let cap = meta
        .get("max_scrypt_log_n")
        .map_or(DEFAULT_MAX_SCRYPT_LOG_N, |v| v.as_u64().unwrap() as u8);
    Ok((credential(meta)?, verify, cap))
}

/// Reads every tensor whole, then checks that `verify_all` and chunk-by-chunk slices agree
/// with the whole reads (same bytes, or the same failure class).
fn run(meta: &Value, file: Vec<u8>) -> Result<Vec<(String, String)>, Error> {
    let (cred, verify, cap) = open_args(meta)?;
    let r = Reader::from_bytes(file, &cred, verify.as_deref(), cap)?;
    let mut out = Vec::new();
    let mut whole = Ok(());
    for (i, t) in r.header().tensors.iter().enumerate() {
        let mut buf = vec![0u8; t.nbytes() as usize];
        if let Err(e) = r.read_into(i, &mut buf) {
            whole = Err(e);
            break;
        }
        // The same bytes through slices of at most one chunk.
        let cs = r.header().chunk_size as usize;
        let mut sliced = vec![0u8; buf.len()];
        for (j, piece) in sliced.chunks_mut(cs).enumerate() {
            r.read_range_into(i, (j * cs) as u64, piece)?;
        }
        assert_eq!(sliced, buf, "slices of {:?}", t.name);
        out.push((t.name.clone(), hex::encode(Sha256::digest(&buf))));
    }
    match (r.verify_all(), &whole) {
        (Ok(()), Ok(())) => {}
        (Err(Error::Integrity(_)), Err(Error::Integrity(_))) => {}
        (v, w) => panic!("verify_all gave {v:?}, reading gave {w:?}"),
    }
    whole.map(|()| out)
}

/// The same vector read by ranges, as a remote file is (`spec/FORMAT.md`, "Ranged readers"):
/// the front up to the data, then each tensor from the bytes of its span alone.
fn run_ranged(meta: &Value, file: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let (cred, verify, cap) = open_args(meta)?;
    let len = file.len() as u64;
    let need = header::prefix_len(&file[..file.len().min(64)], len)? as usize;
    let front = file[..need].to_vec();
    let r = Reader::from_front(front, len, "ranged".into(), &cred, verify.as_deref(), cap)?;
    let mut out = Vec::new();
    for (i, t) in r.header().tensors.iter().enumerate() {
        let (a, b) = r.span(i, 0, t.nbytes())?;
        let mut buf = vec![0u8; t.nbytes() as usize];
        r.read_range_from(i, 0, &mut buf, a, &file[a as usize..b as usize])?;
        out.push((t.name.clone(), hex::encode(Sha256::digest(&buf))));
    }
    Ok(out)
}

#[test]
fn all_vectors() {
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(vectors_dir())
        .expect("spec/vectors exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for json_path in entries {
        let meta: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
        let file = std::fs::read(json_path.with_extension("enct")).unwrap();
        let expect = meta["expect"].as_str().unwrap();
        let ranged = run_ranged(&meta, &file);
        let got = run(&meta, file);
        let name = json_path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        match (expect, &got) {
            ("success", Ok(tensors)) => {
                let want: Vec<(String, String)> = meta["tensors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        (
                            t["name"].as_str().unwrap().to_owned(),
                            t["sha256"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
                assert_eq!(&want, tensors, "{name}");
            }
            ("format failure", Err(Error::Format(_)))
            | ("no match", Err(Error::WrongKey(_)))
            | ("header failure", Err(Error::Integrity(_) | Error::Signature(_)))
            | ("payload failure", Err(Error::Integrity(_))) => {}
            _ => panic!("{name}: expected {expect}, got {got:?}"),
        }
        match (&got, &ranged) {
            (Ok(whole), Ok(by_ranges)) => assert_eq!(whole, by_ranges, "{name}: ranged"),
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "{name}: ranged read failed otherwise: {b:?} (whole: {a:?})"
            ),
            _ => panic!("{name}: read whole {got:?}, by ranges {ranged:?}"),
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} vectors found");
}
