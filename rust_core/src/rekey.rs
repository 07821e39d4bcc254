//! Re-keying: rewriting the stanza area, so that a different set of keys opens the file,
//! without touching (or decrypting) anything else (`spec/FORMAT.md`, "Re-keying"): adding
//! stanzas and removing some while keeping the others ([`change_stanzas`]), or replacing them
//! all ([`rekey_file`]).
//!
//! The path is opened once, read-write, and everything after goes through that one
//! descriptor: an advisory lock, authentication (the reader maps and reads the descriptor,
//! never the path again) and the in-place write. Renaming another file over the path
//! meanwhile cannot make a re-key write into that other file. A rewrite (the new stanzas need
//! another stanza area length) builds a temporary file beside the path and swaps it in only if
//! the path still names the file that was authenticated.

use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::crypto::SecretKey;
use crate::error::{Error, Result};
use crate::header::{self, Preamble, Stanza, MAX_STANZAS, MAX_STANZA_AREA, PAGE, PREAMBLE_LEN};
use crate::keys::{make_stanza, stanzas_of, Credential, Recipient};
use crate::reader::Reader;
use crate::writer::{
    check_recipients, keep_mode_and_owner, padded_area, stanza_area_json, sync_dir, write_zeros,
    TempFile,
};

/// How a re-key was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rekeyed {
    /// One write of the first page; no other byte changed.
    InPlace,
    /// The new stanzas needed another stanza area length: the file was rewritten (atomically),
    /// its header, MAC, tables and tensor bytes copied unchanged.
    Rewritten,
}

/// How many times the path is reopened when the file locked turns out to have been replaced
/// (by a concurrent rewriting re-key) while we waited for the lock. Each retry means another
/// re-key completed; the bound only stops a livelock.
const OPEN_ATTEMPTS: usize = 100;

/// Replaces the stanzas of `path` (opened with `cred`) with stanzas for `recipients` (a new
/// passphrase's scrypt at `log_n`): every current stanza goes. Any publisher signature stays
/// valid: it does not cover the stanza area. `max_scrypt_log_n` is the reader's scrypt cost
/// cap for opening the file (normally `DEFAULT_MAX_SCRYPT_LOG_N`). Nothing is written unless
/// the file authenticates and the new stanza list is one readers accept.
pub fn rekey_file(
    path: &Path,
    cred: &Credential,
    recipients: &[Recipient],
    log_n: u8,
    max_scrypt_log_n: u8,
) -> Result<Rekeyed> {
    let replace = Changes {
        keep: false,
        remove: &[],
        add: recipients,
        log_n,
    };
    change_stanzas(path, cred, &replace, max_scrypt_log_n).map(|(how, _)| how)
}

/// A stanza (or stanzas) that a re-key removes.
pub enum Removal {
    /// The stanza at this position, counted from 0 as `inspect` lists them.
    Index(usize),
    /// The stanzas that carry this recipient's fingerprint (`spec/FORMAT.md`, "Recipient
    /// fingerprints"). A file written without fingerprints has none to match.
    Recipient(Recipient),
    /// The stanzas made for the holder of this raw key, X25519 or RSA identity, found with the
    /// key itself ([`crate::keys::stanzas_of`]), fingerprints or not.
    Holder(Credential),
    /// The passphrase (scrypt) stanza.
    Passphrase,
}

/// How a re-key changes the stanzas of a file.
pub struct Changes<'a> {
    /// Keep every current stanza that no removal names (unknown types and fingerprints
    /// included, in order); `false` replaces them all, and nothing may be named for removal.
    pub keep: bool,
    pub remove: &'a [Removal],
    /// New stanzas, written after the kept ones.
    pub add: &'a [Recipient],
    /// The scrypt work factor of an added passphrase.
    pub log_n: u8,
}

/// Changes the stanzas of `path` (opened with `cred`) as `changes` says: remove some, keep the
/// others, add new ones; returns how the file was written and its new stanzas. As for
/// [`rekey_file`], nothing is written unless the file authenticates and every removal names a
/// stanza of the file, and the new list is one readers accept: not empty (nobody could open
/// the file), at most 256 stanzas, a passphrase alone.
pub fn change_stanzas(
    path: &Path,
    cred: &Credential,
    changes: &Changes,
    max_scrypt_log_n: u8,
) -> Result<(Rekeyed, Vec<Stanza>)> {
    let shown = path.display().to_string();
    if changes.keep {
        if changes.add.is_empty() && changes.remove.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to change: give stanzas to add or to remove".into(),
            ));
        }
    } else {
        check_recipients(changes.add)?;
        if !changes.remove.is_empty() {
            return Err(Error::InvalidArgument(
                "replacing every stanza removes them all: name none to remove".into(),
            ));
        }
    }
    let (file, ours) = open_locked(path, &shown)?;
    let dup = file
        .try_clone()
        .map_err(|e| Error::io(e, format!("cannot duplicate the descriptor of {shown}")))?;
    let reader = Reader::from_file(dup, shown.clone(), cred, None, max_scrypt_log_n)?;
    let h = reader.header();
    let stanzas = new_stanzas(&h.stanzas, reader.file_key(), changes, &shown)?;
    let json = stanza_area_json(&stanzas, h.signature.as_ref());
    let area_len = header::canonical_area_len(json.len() as u64);
    if area_len > MAX_STANZA_AREA {
        return Err(Error::InvalidArgument(format!(
            "the new stanzas need a {area_len}-byte stanza area, more than the format's \
             {MAX_STANZA_AREA}: give fewer or smaller keys and recipients ({shown} is unchanged)"
        )));
    }
    let area = padded_area(&json, area_len);

    if area_len == h.stanza_area_len && PREAMBLE_LEN + area_len <= PAGE {
        drop(reader);
        // One write within the first page, through the descriptor that was authenticated: a
        // crash leaves the old or the new area, not a mix.
        file.write_all_at(&area, PREAMBLE_LEN)
            .map_err(|e| Error::io(e, format!("cannot write {shown}")))?;
        file.sync_all()
            .map_err(|e| Error::io(e, format!("cannot sync {shown}")))?;
        return Ok((Rekeyed::InPlace, stanzas));
    }

    // The area grows, shrinks back (it must stay canonical) or spans more than the first
    // page: rewrite. Everything from the header to the end of the tables is copied, then the
    // canonical zero padding, then the data section.
    let old_header = h.header_offset();
    let tables_end = h.tables_end();
    let new_tables_end = PREAMBLE_LEN + area_len + (tables_end - old_header);
    let data_offset = new_tables_end.div_ceil(PAGE) * PAGE;
    let pre = Preamble {
        stanza_area_len: area_len,
        header_len: h.header_len,
        data_offset,
    };
    let (old_data, end) = (h.data_offset, reader.raw().len() as u64);
    let file_key = Credential::file_key(&reader.file_key()[..])?;
    drop(reader);
    let target = rewrite_target(path, &shown)?;
    rewrite(&target, &shown, &ours, |out| {
        let io = |e| Error::io(e, format!("cannot write a temporary file next to {shown}"));
        out.write_all(&pre.to_bytes()).map_err(io)?;
        out.write_all(&area).map_err(io)?;
        copy_range(&file, old_header, tables_end - old_header, out, &shown)?;
        write_zeros(out, data_offset - new_tables_end)?;
        copy_range(&file, old_data, end - old_data, out, &shown)?;
        // Check the new file as a reader will before it replaces anything: its layout, and its
        // header MAC under the same file key.
        let written = out.try_clone().map_err(io)?;
        Reader::from_file(written, shown.clone(), &file_key, None, max_scrypt_log_n)
            .map(drop)
            .map_err(|e| e.context("the re-keyed copy does not verify"))
    })?;
    Ok((Rekeyed::Rewritten, stanzas))
}

fn refuse(msg: String) -> Error {
    Error::InvalidArgument(msg + "; nothing was changed")
}

/// The stanza list after `changes` (`current` is the file's, `file_key` what the new stanzas
/// wrap): the stanzas kept, unchanged and in order, then one per added recipient. Every
/// removal must name at least one stanza, and an added recipient must not already have one of
/// the kept stanzas (nor, when stanzas are kept, be added twice).
pub fn new_stanzas(
    current: &[Stanza],
    file_key: &SecretKey,
    changes: &Changes,
    shown: &str,
) -> Result<Vec<Stanza>> {
    let mut removed = vec![!changes.keep; current.len()];
    for r in changes.remove {
        for i in removed_by(r, current, shown)? {
            removed[i] = true;
        }
    }
    let kept: Vec<(usize, &Stanza)> = current
        .iter()
        .enumerate()
        .filter(|(i, _)| !removed[*i])
        .collect();
    for (n, r) in changes.add.iter().enumerate() {
        if let Some((i, _)) = kept.iter().find(|(_, s)| r.owns(s)) {
            return Err(refuse(format!(
                "the {} to add already has stanza {i} of {shown} (to renew its stanza, remove \
                 it in the same re-key)",
                r.describe()
            )));
        }
        // (Replacing every stanza keeps the older rule: duplicates are the caller's business.)
        let fp = r.fingerprint();
        if changes.keep && fp.is_some() && changes.add[..n].iter().any(|o| o.fingerprint() == fp) {
            return Err(refuse(format!("the same {} is given twice", r.describe())));
        }
    }
    let total = kept.len() + changes.add.len();
    if total == 0 {
        return Err(refuse(format!(
            "this would leave {shown} without any stanza: nobody could open it. Add a key, \
             recipient or passphrase in the same re-key, or delete the file"
        )));
    }
    if total > MAX_STANZAS {
        return Err(refuse(format!(
            "{shown} would have {total} stanzas ({} kept, {} added); a file holds at most \
             {MAX_STANZAS}",
            kept.len(),
            changes.add.len()
        )));
    }
    let passphrase = changes.add.iter().any(Recipient::is_passphrase)
        || kept.iter().any(|(_, s)| matches!(s, Stanza::Scrypt { .. }));
    if passphrase && total > 1 {
        return Err(refuse(format!(
            "a passphrase (scrypt) stanza must be the only stanza of a file, and {shown} would \
             have {total}: remove the passphrase (remove_passphrase=True, CLI \
             --remove-passphrase) to add others, or replace every stanza (replace=True, CLI \
             --replace)"
        )));
    }
    let mut out: Vec<Stanza> = kept.into_iter().map(|(_, s)| s.clone()).collect();
    for r in changes.add {
        out.push(make_stanza(file_key, r, changes.log_n)?);
    }
    Ok(out)
}

/// The positions of the stanzas that `removal` names; an error if it names none.
fn removed_by(removal: &Removal, current: &[Stanza], shown: &str) -> Result<Vec<usize>> {
    let n = current.len();
    let positions = |f: &dyn Fn(&Stanza) -> bool| -> Vec<usize> {
        (0..n).filter(|&i| f(&current[i])).collect()
    };
    let hits = match removal {
        Removal::Index(i) if *i < n => vec![*i],
        Removal::Index(i) => {
            return Err(refuse(format!(
                "{shown} has no stanza {i}: its {n} stanza(s) are numbered from 0 to {}, as \
                 `enctensor inspect` lists them",
                n - 1
            )))
        }
        Removal::Passphrase => positions(&|s| matches!(s, Stanza::Scrypt { .. })),
        Removal::Holder(cred) => stanzas_of(current, cred)?,
        Removal::Recipient(r) => {
            let Some(fp) = r.fingerprint() else {
                return Err(Error::InvalidArgument(
                    "a passphrase is not removed as a recipient: remove the passphrase stanza \
                     (remove_passphrase=True, CLI --remove-passphrase)"
                        .into(),
                ));
            };
            positions(&|s| s.fingerprint() == Some(&fp))
        }
    };
    if !hits.is_empty() {
        return Ok(hits);
    }
    Err(refuse(match removal {
        Removal::Index(_) => unreachable!("an index in range names its stanza"),
        Removal::Passphrase => format!("{shown} has no passphrase (scrypt) stanza to remove"),
        Removal::Holder(cred) => format!(
            "the {} given to remove opens no stanza of {shown}",
            cred.describe()
        ),
        Removal::Recipient(r) => {
            let without = positions(&|s| s.fingerprint().is_none()).len();
            let how = "remove its stanza with the recipient's private key (remove_keys=, CLI \
                       --remove-identity), or by its number (remove_stanzas=, CLI --remove-stanza \
                       N, numbered from 0 as `enctensor inspect` lists them), or re-encrypt the \
                       file";
            if without == n {
                format!(
                    "the stanzas of {shown} carry no recipient fingerprints (it was written \
                     without them: fingerprints=True, CLI --fingerprint), so a public key cannot \
                     tell which stanza is its recipient's: {how}"
                )
            } else if without > 0 {
                format!(
                    "no stanza of {shown} carries the fingerprint of this {}; {without} of its \
                     {n} stanzas carry no fingerprint and one of them may be its: {how}",
                    r.describe()
                )
            } else {
                format!(
                    "no stanza of {shown} is for this {} (none carries its fingerprint)",
                    r.describe()
                )
            }
        }
    }))
}

/// Opens `path` read-write and takes an exclusive lock on it with `flock`. The lock is
/// advisory: it makes concurrent re-keys of one file wait for each other, but readers and
/// writers that do not take it (including other programs) are not held off. If the file
/// locked was unlinked while we waited (a concurrent re-key replaced it), the path is opened
/// again.
fn open_locked(path: &Path, shown: &str) -> Result<(File, Metadata)> {
    let mut attempts = 0;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(e, format!("cannot open {shown} for writing")))?;
        let stat = |f: &File| {
            f.metadata()
                .map_err(|e| Error::io(e, format!("cannot stat {shown}")))
        };
        if !stat(&file)?.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{shown} is not a regular file"
            )));
        }
        lock_exclusive(&file).map_err(|e| Error::io(e, format!("cannot lock {shown}")))?;
        let md = stat(&file)?;
        if md.nlink() > 0 {
            return Ok((file, md));
        }
        attempts += 1;
        if attempts == OPEN_ATTEMPTS {
            return Err(Error::io(
                io::Error::other("the file was replaced each time it was locked"),
                format!("cannot re-key {shown}"),
            ));
        }
    }
}

/// `flock(LOCK_EX)`, waiting for other holders. Where the file system has no locks at all the
/// re-key goes on unlocked: the lock is advisory and only orders cooperating re-keys.
fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor that `file` keeps open; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOLCK | libc::EOPNOTSUPP) => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Copies `len` bytes of `src` from offset `from` to the current position of `out` (with
/// `copy_file_range` where the kernel offers it).
fn copy_range(src: &File, from: u64, len: u64, out: &mut &File, shown: &str) -> Result<()> {
    let mut r = src;
    r.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io(e, format!("cannot read {shown}")))?;
    let copied = io::copy(&mut r.take(len), out)
        .map_err(|e| Error::io(e, format!("cannot copy {shown}")))?;
    if copied != len {
        return Err(Error::format(format!(
            "{shown} was truncated while it was being re-keyed"
        )));
    }
    Ok(())
}

/// The name a rewrite replaces: `path`, or the file a symbolic link at `path` points to (so
/// that the link stays a link).
fn rewrite_target(path: &Path, shown: &str) -> Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => fs::canonicalize(path)
            .map_err(|e| Error::io(e, format!("cannot resolve the link {shown}"))),
        _ => Ok(path.to_path_buf()),
    }
}

fn same_file(a: &Metadata, b: &Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Writes a new file with `fill` next to `target` (with the mode and owner of `ours`, the file
/// authenticated), syncs it, and puts it in place only if `target` still names `ours`.
fn rewrite(
    target: &Path,
    shown: &str,
    ours: &Metadata,
    fill: impl FnOnce(&mut &File) -> Result<()>,
) -> Result<()> {
    let (mut temp, dir, out) = TempFile::beside(target, shown)?;
    let tmp = temp.path.clone();
    keep_mode_and_owner(&out, ours)
        .map_err(|e| Error::io(e, format!("cannot set the mode of a file next to {shown}")))?;
    fill(&mut &out)?;
    out.sync_all()
        .map_err(|e| Error::io(e, format!("cannot sync a temporary file next to {shown}")))?;
    let new = out
        .metadata()
        .map_err(|e| Error::io(e, format!("cannot stat a temporary file next to {shown}")))?;
    drop(out);
    swap_in(&tmp, target, shown, ours, &new, &mut temp, exchange)?;
    // Make the swap and the unlink durable.
    sync_dir(&dir);
    Ok(())
}

/// The error when the path no longer names the file that was authenticated.
fn moved(shown: &str, extra: &str) -> Error {
    Error::io(
        io::Error::other(format!(
            "another file was moved to this path while it was being re-keyed, so nothing was \
             replaced{extra}; re-key it again"
        )),
        format!("cannot re-key {shown}"),
    )
}

/// Puts the new file at `tmp` in place of `target` if `target` still names `ours`.
///
/// With `renameat2(RENAME_EXCHANGE)` the two names are swapped atomically, then the file that
/// `target` named (now at `tmp`, a name only we use) is checked: if it is not `ours`, the swap
/// is undone and nothing is unlinked, so a file renamed over the path meanwhile is never
/// replaced. Without it (file systems or kernels that lack the flag), the path is compared with
/// `ours` just before a plain rename: a rename by someone else between the two can still
/// replace their file (a tiny window).
fn swap_in(
    tmp: &Path,
    target: &Path,
    shown: &str,
    ours: &Metadata,
    new: &Metadata,
    temp: &mut TempFile,
    exchange: fn(&Path, &Path) -> io::Result<()>,
) -> Result<()> {
    let replace_err = |e| Error::io(e, format!("cannot replace {shown}"));
    match exchange(tmp, target) {
        Ok(()) => {
            let was = fs::symlink_metadata(tmp);
            if was.as_ref().is_ok_and(|m| same_file(m, ours)) {
                // `tmp` now names the old file, under a name only we use: unlink it.
                temp.keep = true;
                fs::remove_file(tmp).map_err(|e| {
                    Error::io(
                        e,
                        format!(
                            "{shown} was re-keyed, but its old copy at {} could not be removed",
                            tmp.display()
                        ),
                    )
                })?;
                return Ok(());
            }
            // Someone else's file (or nothing we can stat): swap back, unlink nothing.
            temp.keep = true;
            match exchange(tmp, target) {
                Ok(()) => {
                    if fs::symlink_metadata(tmp).is_ok_and(|m| same_file(&m, new)) {
                        temp.keep = false; // our new file is back at `tmp`
                        Err(moved(shown, ""))
                    } else {
                        Err(moved(
                            shown,
                            &format!(
                                " (a file moved there meanwhile is now at {})",
                                tmp.display()
                            ),
                        ))
                    }
                }
                // The path went away meanwhile: leave the other file where it is, and say so.
                Err(_) => Err(moved(
                    shown,
                    &format!(" (the file that was there is now at {})", tmp.display()),
                )),
            }
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => Err(moved(shown, "")),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) =>
        {
            // No RENAME_EXCHANGE here: check, then rename. A rename by someone else between
            // the check and our rename can still replace their file: a tiny window remains.
            match fs::symlink_metadata(target) {
                Ok(m) if same_file(&m, ours) => {
                    fs::rename(tmp, target).map_err(replace_err)?;
                    temp.keep = true; // nothing left at `tmp`
                    Ok(())
                }
                _ => Err(moved(shown, "")),
            }
        }
        Err(e) => Err(replace_err(e)),
    }
}

/// Swaps the names `a` and `b` atomically: `renameat2(2)` with `RENAME_EXCHANGE`, relative to
/// the working directory. Fails with `ENOSYS` where it does not exist, `EINVAL` where the file
/// system lacks the flag (the caller falls back).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that outlive the call; the kernel only reads them.
    // Through `syscall`, so that no particular C library version is needed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory with the files `t` ("old") and `other` ("other"), `t` mode 0600.
    fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("enct-rekey-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        let (t, other) = (dir.join("t"), dir.join("other"));
        fs::write(&t, "old").unwrap();
        fs::set_permissions(&t, Permissions::from_mode(0o600)).unwrap();
        fs::write(&other, "other").unwrap();
        (dir, t, other)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn unsupported(_: &Path, _: &Path) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn run(
        t: &Path,
        during: impl FnOnce(),
        exchange: fn(&Path, &Path) -> io::Result<()>,
    ) -> Result<()> {
        let ours = fs::metadata(t).unwrap();
        let file = File::open(t).unwrap(); // keeps the old inode alive, like the re-key's fd
        let dir = t.parent().unwrap();
        let tmp = dir.join(".t.0.tmp");
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .unwrap();
        let mut temp = TempFile {
            path: tmp.clone(),
            keep: false,
        };
        keep_mode_and_owner(&out, &ours).unwrap();
        (&out).write_all(b"new").unwrap();
        during();
        let new = out.metadata().unwrap();
        let r = swap_in(&tmp, t, "t", &ours, &new, &mut temp, exchange);
        drop((file, temp));
        r
    }

    #[test]
    fn replaces_the_file_it_authenticated_keeping_its_mode() {
        for (name, how) in [
            ("ok-x", exchange as fn(&Path, &Path) -> io::Result<()>),
            ("ok-f", unsupported),
        ] {
            let (dir, t, _) = setup(name);
            run(&t, || {}, how).unwrap();
            assert_eq!(fs::read_to_string(&t).unwrap(), "new");
            assert_eq!(fs::metadata(&t).unwrap().mode() & 0o7777, 0o600);
            assert_eq!(names(&dir), ["other", "t"]);
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn never_replaces_a_file_moved_over_the_path() {
        for (name, how) in [
            ("over-x", exchange as fn(&Path, &Path) -> io::Result<()>),
            ("over-f", unsupported),
        ] {
            let (dir, t, other) = setup(name);
            let e = run(&t, || fs::rename(&other, &t).unwrap(), how).unwrap_err();
            assert!(
                e.to_string()
                    .contains("another file was moved to this path"),
                "{e}"
            );
            assert_eq!(fs::read_to_string(&t).unwrap(), "other");
            assert_eq!(names(&dir), ["t"]);
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn never_recreates_a_path_moved_away() {
        for (name, how) in [
            ("away-x", exchange as fn(&Path, &Path) -> io::Result<()>),
            ("away-f", unsupported),
        ] {
            let (dir, t, _) = setup(name);
            let moved_to = dir.join("moved");
            run(&t, || fs::rename(&t, &moved_to).unwrap(), how).unwrap_err();
            assert_eq!(fs::read_to_string(&moved_to).unwrap(), "old");
            assert_eq!(names(&dir), ["moved", "other"]);
            fs::remove_dir_all(dir).unwrap();
        }
    }
}
