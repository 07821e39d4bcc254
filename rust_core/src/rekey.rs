//! Re-keying: replacing the stanza area, so that a different set of keys opens the file,
//! without touching (or decrypting) anything else (`spec/FORMAT.md`, "Re-keying").

use std::fs::OpenOptions;
use std::io::{Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::header::{Preamble, PREAMBLE_LEN};
use crate::keys::{make_stanza, Credential, Recipient};
use crate::reader::Reader;
use crate::writer::{
    area_len_for, atomic_replace, check_recipients, padded_area, stanza_area_json, write_zeros,
    PAGE, WRITER_DATA_ALIGN,
};

/// How a re-key was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rekeyed {
    /// One write of the first page; no other byte changed.
    InPlace,
    /// The new stanzas needed a larger stanza area: the file was rewritten (atomically), its
    /// header, MAC, tags and tensor bytes copied unchanged.
    Rewritten,
}

/// Replaces the stanzas of `path` (opened with `cred`) with stanzas for `recipients`. Any
/// publisher signature stays valid: it does not cover the stanza area.
pub fn rekey_file(
    path: &Path,
    cred: &Credential,
    recipients: &[Recipient],
    log_n: u8,
) -> Result<Rekeyed> {
    check_recipients(recipients)?;
    let shown = path.display().to_string();
    let reader = Reader::open(path, cred, None)?;
    let h = reader.header().clone();
    let stanzas = recipients
        .iter()
        .map(|r| make_stanza(reader.file_key(), r, log_n))
        .collect::<Result<Vec<_>>>()?;
    let json = stanza_area_json(&stanzas, h.signature.as_ref());

    if json.len() as u64 <= h.stanza_area_len && PREAMBLE_LEN + h.stanza_area_len <= PAGE {
        drop(reader);
        let area = padded_area(&json, h.stanza_area_len);
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(e, format!("cannot open {shown} for writing")))?;
        // One write within the first page: a crash leaves the old or the new area, not a mix.
        file.write_all_at(&area, PREAMBLE_LEN)
            .map_err(|e| Error::io(e, format!("cannot write {shown}")))?;
        file.sync_all()
            .map_err(|e| Error::io(e, format!("cannot sync {shown}")))?;
        return Ok(Rekeyed::InPlace);
    }

    let area_len = area_len_for(json.len() as u64);
    let header_block = &reader.raw()[h.header_offset() as usize..h.tags_end() as usize];
    let tags_end = PREAMBLE_LEN + area_len + header_block.len() as u64;
    let data_offset = tags_end.div_ceil(WRITER_DATA_ALIGN) * WRITER_DATA_ALIGN;
    let pre = Preamble {
        stanza_area_len: area_len,
        header_len: h.header_len,
        data_offset,
    };
    let data = &reader.raw()[h.data_offset as usize..];
    atomic_replace(path, |w| {
        let io = |e| Error::io(e, "write failed");
        w.write_all(&pre.to_bytes()).map_err(io)?;
        w.write_all(&padded_area(&json, area_len)).map_err(io)?;
        w.write_all(header_block).map_err(io)?;
        write_zeros(w, data_offset - tags_end)?;
        w.write_all(data).map_err(io)?;
        w.stream_position().map_err(io)
    })?;
    Ok(Rekeyed::Rewritten)
}
