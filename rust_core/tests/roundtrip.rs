//! Write/read round trips and tamper detection through the public Rust API.

use std::io::Cursor;

use enctensor_core::{
    header, rekey_file, write_to, Credential, Dtype, Error, Reader, Recipient, Rekeyed,
    TensorSource, WriteOptions,
};

const KEY: [u8; 32] = [0x42; 32];

/// (name, dtype, shape, bytes, encrypted)
type Spec = (String, Dtype, Vec<u64>, Vec<u8>, bool);

fn sample() -> Vec<Spec> {
    let big: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        ("w".into(), Dtype::F32, vec![2, 3], (0..24).collect(), true),
        (
            "scalar".into(),
            Dtype::F64,
            vec![],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            true,
        ),
        ("empty".into(), Dtype::I16, vec![0, 5], vec![], true),
        ("big".into(), Dtype::U8, vec![big.len() as u64], big, true),
        (
            "clear".into(),
            Dtype::BF16,
            vec![3],
            vec![9, 8, 7, 6, 5, 4],
            false,
        ),
    ]
}

fn write(tensors: &[Spec], creds: Vec<Recipient>) -> Vec<u8> {
    write_signed(tensors, creds, None)
}

fn write_signed(tensors: &[Spec], creds: Vec<Recipient>, sign_seed: Option<[u8; 32]>) -> Vec<u8> {
    let sources: Vec<TensorSource> = tensors
        .iter()
        .map(|(n, d, s, b, e)| TensorSource {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
            data: b,
            encrypted: *e,
        })
        .collect();
    let opts = WriteOptions {
        chunk_size: 4096,
        metadata: vec![("k".into(), "v".into())],
        recipients: creds,
        log_n: 10,
        sign_seed: sign_seed.map(zeroize::Zeroizing::new),
    };
    let mut cur = Cursor::new(Vec::new());
    write_to(&mut cur, &sources, &opts).unwrap();
    cur.into_inner()
}

fn read_all(file: Vec<u8>, cred: &Credential) -> Result<Vec<Vec<u8>>, Error> {
    let r = Reader::from_bytes(file, cred, None)?;
    let mut outs: Vec<Vec<u8>> = r
        .header()
        .tensors
        .iter()
        .map(|t| vec![0u8; t.nbytes() as usize])
        .collect();
    let mut jobs: Vec<(usize, &mut [u8])> = outs
        .iter_mut()
        .enumerate()
        .map(|(i, o)| (i, o.as_mut_slice()))
        .collect();
    r.read_many(&mut jobs)?;
    Ok(outs)
}

#[test]
fn round_trip_every_shape_kind() {
    let t = sample();
    let file = write(&t, vec![Recipient::key(&KEY).unwrap()]);
    let outs = read_all(file, &Credential::key(&KEY).unwrap()).unwrap();
    for ((_, _, _, want, _), got) in t.iter().zip(&outs) {
        assert_eq!(want, got);
    }
}

#[test]
fn any_of_several_keys_opens_and_others_do_not() {
    let t = sample();
    let creds = vec![
        Recipient::key(&[1; 32]).unwrap(),
        Recipient::key(&[2; 32]).unwrap(),
    ];
    let file = write(&t, creds);
    assert!(read_all(file.clone(), &Credential::key(&[2; 32]).unwrap()).is_ok());
    assert!(matches!(
        read_all(file, &Credential::key(&[3; 32]).unwrap()),
        Err(Error::WrongKey(_))
    ));
}

#[test]
fn passphrase_round_trip() {
    let t = sample();
    let file = write(&t, vec![Recipient::passphrase("hunter2 hunter2").unwrap()]);
    assert!(read_all(
        file.clone(),
        &Credential::passphrase("hunter2 hunter2").unwrap()
    )
    .is_ok());
    assert!(matches!(
        read_all(file, &Credential::passphrase("hunter3").unwrap()),
        Err(Error::WrongKey(_))
    ));
}

/// Flipping any single bit of the file must fail with a typed error and release nothing.
#[test]
fn every_flipped_bit_is_detected() {
    let t = sample();
    let file = write(&t, vec![Recipient::key(&KEY).unwrap()]);
    let cred = Credential::key(&KEY).unwrap();
    let h = header::parse_file(&file).unwrap();
    let mut kinds = [0usize; 3];
    // Every byte of the preamble, header, MAC and tag table, and a stride through the data.
    let positions =
        (0..h.data_offset as usize).chain((h.data_offset as usize..file.len()).step_by(97));
    for pos in positions {
        for bit in [0u8, 7] {
            let mut bad = file.clone();
            bad[pos] ^= 1 << bit;
            match read_all(bad, &cred) {
                Ok(_) => panic!("flipped bit {bit} of byte {pos} went unnoticed"),
                Err(Error::Format(_)) => kinds[0] += 1,
                Err(Error::WrongKey(_)) => kinds[1] += 1,
                Err(Error::Integrity(_)) => kinds[2] += 1,
                Err(e) => panic!("unexpected error kind at byte {pos}: {e}"),
            }
        }
    }
    assert!(kinds[2] > 0 && kinds[0] > 0 && kinds[1] > 0, "{kinds:?}");
}

#[test]
fn truncation_and_trailing_bytes_are_format_errors() {
    let file = write(&sample(), vec![Recipient::key(&KEY).unwrap()]);
    let cred = Credential::key(&KEY).unwrap();
    for cut in [0, 10, 24, 100, file.len() / 2, file.len() - 1] {
        assert!(
            matches!(read_all(file[..cut].to_vec(), &cred), Err(Error::Format(_))),
            "cut {cut}"
        );
    }
    let mut longer = file;
    longer.push(0);
    assert!(matches!(read_all(longer, &cred), Err(Error::Format(_))));
}

#[test]
fn ranges_verify_only_their_chunks() {
    let t = sample();
    let mut file = write(&t, vec![Recipient::key(&KEY).unwrap()]);
    let cred = Credential::key(&KEY).unwrap();
    let r = Reader::from_bytes(file.clone(), &cred, None).unwrap();
    let big = &t[3].3;
    for (start, len) in [
        (0usize, 1usize),
        (4000, 200),
        (4096, 4096),
        (5000, 7000),
        (12_000, 388),
    ] {
        let mut out = vec![0u8; len];
        r.read_range_into(3, start as u64, &mut out).unwrap();
        assert_eq!(&out[..], &big[start..start + len]);
    }
    // Corrupt the last chunk of "big": ranges in earlier chunks still read, the last fails.
    let bt = &r.header().tensors[3];
    let last = (r.header().data_offset + bt.end - 1) as usize;
    file[last] ^= 1;
    let r = Reader::from_bytes(file, &cred, None).unwrap();
    let mut out = vec![0u8; 100];
    r.read_range_into(3, 0, &mut out).unwrap();
    let mut out = vec![0u8; 10];
    assert!(matches!(
        r.read_range_into(3, 12_300, &mut out),
        Err(Error::Integrity(_))
    ));
    assert!(
        out.iter().all(|&b| b == 0),
        "nothing is released from a failed chunk"
    );
    assert!(matches!(r.verify_all(), Err(Error::Integrity(_))));
}

/// A file truncated under an open map gives a typed error, not SIGBUS.
#[test]
fn truncated_under_the_map_is_a_format_error() {
    let t: Vec<Spec> = vec![(
        "big".into(),
        Dtype::U8,
        vec![1 << 20],
        vec![7u8; 1 << 20],
        true,
    )];
    let path = std::env::temp_dir().join(format!("enct-trunc-{}.enct", std::process::id()));
    std::fs::write(&path, write(&t, vec![Recipient::key(&KEY).unwrap()])).unwrap();
    let r = Reader::open(&path, &Credential::key(&KEY).unwrap(), None).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let mut out = vec![0u8; 1 << 20];
    let err = r.read_into(0, &mut out).unwrap_err();
    assert!(
        matches!(err, Error::Format(ref m) if m.contains("truncated")),
        "{err}"
    );
    assert!(out.iter().all(|&b| b == 0));
    drop(r);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn signatures_verify_only_with_the_publisher_key() {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let seed = [7u8; 32];
    let public = Ed25519KeyPair::from_seed_unchecked(&seed)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let other = Ed25519KeyPair::from_seed_unchecked(&[8u8; 32])
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let cred = Credential::key(&KEY).unwrap();
    let signed = write_signed(&sample(), vec![Recipient::key(&KEY).unwrap()], Some(seed));
    assert!(Reader::from_bytes(signed.clone(), &cred, Some(&public)).is_ok());
    assert!(Reader::from_bytes(signed.clone(), &cred, None).is_ok());
    assert!(matches!(
        Reader::from_bytes(signed, &cred, Some(&other)),
        Err(Error::Signature(_))
    ));
    let unsigned = write(&sample(), vec![Recipient::key(&KEY).unwrap()]);
    let err = Reader::from_bytes(unsigned, &cred, Some(&public))
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Signature(ref m) if m.contains("not signed")),
        "{err}"
    );
}

#[test]
fn rekey_in_place_and_by_rewrite() {
    let dir = std::env::temp_dir().join(format!("enct-rekey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.enct");
    let t = sample();
    std::fs::write(
        &path,
        write_signed(&t, vec![Recipient::key(&KEY).unwrap()], Some([7u8; 32])),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let old = Credential::key(&KEY).unwrap();
    let new = [9u8; 32];
    let how = rekey_file(&path, &old, &[Recipient::key(&new).unwrap()], 10).unwrap();
    assert_eq!(how, Rekeyed::InPlace);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before[4096..],
        after[4096..],
        "nothing past the first page changes"
    );
    assert!(matches!(
        Reader::open(&path, &old, None),
        Err(Error::WrongKey(_))
    ));
    let r = Reader::open(&path, &Credential::key(&new).unwrap(), None).unwrap();
    let mut out = vec![0u8; t[3].3.len()];
    r.read_into(3, &mut out).unwrap();
    assert_eq!(out, t[3].3);
    drop(r);
    // 100 recipients do not fit in the first page: the file is rewritten, tensors untouched.
    let many: Vec<Recipient> = (0..100u8)
        .map(|i| Recipient::key(&[i; 32]).unwrap())
        .collect();
    let how = rekey_file(&path, &Credential::key(&new).unwrap(), &many, 10).unwrap();
    assert_eq!(how, Rekeyed::Rewritten);
    let rewritten = std::fs::read(&path).unwrap();
    let h = header::parse_file(&rewritten).unwrap();
    assert!(h.stanza_area_len > 4064 && h.stanzas.len() == 100);
    let old_h = header::parse_file(&after).unwrap();
    assert_eq!(
        rewritten[h.data_offset as usize..],
        after[old_h.data_offset as usize..]
    );
    let r = Reader::open(&path, &Credential::key(&[42u8; 32]).unwrap(), None).unwrap();
    r.verify_all().unwrap();
    drop(r);
    std::fs::remove_dir_all(&dir).unwrap();
}
