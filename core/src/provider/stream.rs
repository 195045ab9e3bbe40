//! Provider-independent helpers for transfer streams.
//!
//! A stream travels between hosts and is hostile until proven otherwise. These
//! wrappers count bytes and keep a running CRC-32 (crc32fast) on both sides, and
//! the reader's primitives turn every short read into
//! [`ProviderError::Stream`] naming the byte offset and what was expected.
//! Nothing here allocates more than the caller's declared bound: a variable
//! length field is checked against its maximum *before* its buffer exists, and
//! bulk content is copied in fixed-size chunks.

use std::io::{self, Read, Write};

use super::ProviderError;

/// Size of the chunks bulk content is copied in.
pub const CHUNK: usize = 128 * 1024;

/// A writer that counts and checksums everything written through it.
#[derive(Debug)]
pub struct HashWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far (hashed or not).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// CRC-32 of the hashed bytes written so far.
    pub fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// Writes bytes that are counted but not hashed (a trailing checksum).
    pub fn write_unhashed(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that counts and checksums everything read through it, with
/// bounded, typed primitives.
#[derive(Debug)]
pub struct HashReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// CRC-32 of the bytes consumed so far.
    pub fn crc(&self) -> u32 {
        self.crc.clone().finalize()
    }

    /// Fills `buf` completely; a short stream is a [`ProviderError::Stream`].
    pub fn read_exact_or(&mut self, buf: &mut [u8], what: &str) -> Result<(), ProviderError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(ProviderError::Stream(format!(
                        "truncated stream: {} bytes in, {what} needs {} more",
                        self.bytes + filled as u64,
                        buf.len() - filled
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ProviderError::io(
                        format!(
                            "reading the stream at byte {} ({what})",
                            self.bytes + filled as u64
                        ),
                        e,
                    ));
                }
            }
        }
        self.crc.update(buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    pub fn read_u8(&mut self, what: &str) -> Result<u8, ProviderError> {
        let mut b = [0u8; 1];
        self.read_exact_or(&mut b, what)?;
        Ok(b[0])
    }

    pub fn read_u16(&mut self, what: &str) -> Result<u16, ProviderError> {
        let mut b = [0u8; 2];
        self.read_exact_or(&mut b, what)?;
        Ok(u16::from_be_bytes(b))
    }

    pub fn read_u32(&mut self, what: &str) -> Result<u32, ProviderError> {
        let mut b = [0u8; 4];
        self.read_exact_or(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    pub fn read_u64(&mut self, what: &str) -> Result<u64, ProviderError> {
        let mut b = [0u8; 8];
        self.read_exact_or(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }

    pub fn read_u128(&mut self, what: &str) -> Result<u128, ProviderError> {
        let mut b = [0u8; 16];
        self.read_exact_or(&mut b, what)?;
        Ok(u128::from_be_bytes(b))
    }

    /// Reads `len` bytes, refusing (before allocating) more than `max`.
    pub fn read_bytes(
        &mut self,
        len: usize,
        max: usize,
        what: &str,
    ) -> Result<Vec<u8>, ProviderError> {
        if len > max {
            return Err(ProviderError::Stream(format!(
                "{what} at byte {} declares {len} bytes, more than the limit of {max}",
                self.bytes
            )));
        }
        let mut buf = vec![0u8; len];
        self.read_exact_or(&mut buf, what)?;
        Ok(buf)
    }

    /// Copies exactly `len` bytes into the file `out` from its current
    /// position on (a new, empty file, or past everything written to it),
    /// leaving a hole where a whole [`CHUNK`]-aligned piece is zeros (a
    /// sparse file stays sparse: a version 1 stream carries holes as
    /// zeros). A copy that ends in a hole extends the file to the copy's
    /// end, never shortens it. Before each piece it
    /// writes, `fits(n, left)` is asked (`n` bytes to write, `left` bytes of
    /// the file from there to its end, both as declared); its refusal stops
    /// the copy. Returns the bytes written, holes not counted.
    pub fn copy_exact_sparse(
        &mut self,
        len: u64,
        out: &mut std::fs::File,
        what: &str,
        fits: &mut dyn FnMut(u64, u64) -> Result<(), ProviderError>,
    ) -> Result<u64, ProviderError> {
        use std::io::{Seek, SeekFrom};
        let start = out
            .stream_position()
            .map_err(|e| ProviderError::io(format!("writing {what}"), e))?;
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
        let mut left = len;
        let mut written = 0;
        let mut hole = false;
        while left > 0 {
            let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            self.read_exact_or(&mut buf[..n], what)?;
            if buf[..n].iter().all(|&b| b == 0) {
                let skip = i64::try_from(n).expect("a chunk fits an i64");
                out.seek(SeekFrom::Current(skip))
                    .map_err(|e| ProviderError::io(format!("writing {what}"), e))?;
                hole = true;
            } else {
                fits(n as u64, left)?;
                out.write_all(&buf[..n])
                    .map_err(|e| ProviderError::io(format!("writing {what}"), e))?;
                written += n as u64;
                hole = false;
            }
            left -= n as u64;
        }
        // A copy that ends in a hole gets the file's length to the hole's
        // end (a copy into the middle of a file leaves its length alone).
        if hole {
            let end = start.saturating_add(len);
            let now = out
                .metadata()
                .map_err(|e| ProviderError::io(format!("writing {what}"), e))?
                .len();
            if now < end {
                out.set_len(end)
                    .map_err(|e| ProviderError::io(format!("writing {what}"), e))?;
            }
        }
        Ok(written)
    }

    /// Copies exactly `len` bytes to `out` in [`CHUNK`]-sized pieces.
    pub fn copy_exact(
        &mut self,
        len: u64,
        out: &mut dyn Write,
        what: &str,
    ) -> Result<(), ProviderError> {
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            self.read_exact_or(&mut buf[..n], what)?;
            out.write_all(&buf[..n])
                .map_err(|e| ProviderError::io(format!("writing {what}"), e))?;
            left -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout of data and holes (none, leading, trailing, all, a
    /// partial last chunk) reads back as the stream's bytes, with the
    /// stream's length; only data chunks are asked of `fits` and written.
    #[test]
    fn a_sparse_copy_reads_as_its_stream_and_writes_only_its_data() {
        use std::os::unix::fs::MetadataExt;
        let c = CHUNK;
        let layouts: [&[(usize, u8)]; 6] = [
            &[(c, 1), (c, 2)],
            &[(3 * c, 0), (c, 7)],
            &[(c, 7), (5 * c, 0)],
            &[(4 * c, 0)],
            &[(c, 0), (c / 2, 9)],
            &[(c, 5), (2 * c, 0), (c + 17, 0)],
        ];
        for (i, layout) in layouts.iter().enumerate() {
            let content: Vec<u8> = layout
                .iter()
                .flat_map(|&(n, b)| std::iter::repeat_n(b, n))
                .collect();
            let len = content.len() as u64;
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("f");
            let mut out = std::fs::File::create(&path).unwrap();
            let mut asked = Vec::new();
            let written = HashReader::new(content.as_slice())
                .copy_exact_sparse(len, &mut out, "content", &mut |n, left| {
                    asked.push((n, left));
                    Ok(())
                })
                .unwrap();
            drop(out);
            let data_chunks: Vec<u64> = content
                .chunks(c)
                .enumerate()
                .filter(|(_, ch)| ch.iter().any(|&b| b != 0))
                .map(|(k, ch)| {
                    assert_eq!(
                        asked.iter().find(|a| a.1 == len - (k * c) as u64),
                        Some(&(ch.len() as u64, len - (k * c) as u64)),
                        "layout {i}: chunk {k} asked with its size and what is left"
                    );
                    ch.len() as u64
                })
                .collect();
            assert_eq!(asked.len(), data_chunks.len(), "layout {i}");
            assert_eq!(written, data_chunks.iter().sum::<u64>(), "layout {i}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "layout {i}");
            let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
            assert!(
                allocated <= written + 4096 * 4,
                "layout {i}: {allocated} allocated"
            );
        }
        // A refusal stops the copy before the refused chunk is written.
        let tmp = tempfile::tempdir().unwrap();
        let mut out = std::fs::File::create(tmp.path().join("f")).unwrap();
        let content = vec![1u8; 2 * c];
        let mut calls = 0;
        let err = HashReader::new(content.as_slice())
            .copy_exact_sparse(2 * c as u64, &mut out, "content", &mut |_, _| {
                calls += 1;
                if calls == 2 {
                    Err(ProviderError::Other("refused".into()))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert_eq!(out.metadata().unwrap().len(), c as u64);
    }

    #[test]
    fn reader_and_writer_agree_on_crc_and_length() {
        let mut w = HashWriter::new(Vec::new());
        w.write_all(b"hello, stream").unwrap();
        let crc = w.crc();
        w.write_unhashed(&crc.to_be_bytes()).unwrap();
        assert_eq!(w.bytes(), 17);
        let bytes = w.into_inner();
        let mut r = HashReader::new(&bytes[..]);
        let body = r.read_bytes(13, 13, "body").unwrap();
        assert_eq!(body, b"hello, stream");
        assert_eq!(r.crc(), crc);
        assert_eq!(r.read_u32("crc").unwrap(), crc);
    }

    #[test]
    fn short_reads_and_oversized_fields_are_stream_errors() {
        let mut r = HashReader::new(&[1u8, 2, 3][..]);
        assert!(matches!(r.read_u64("x"), Err(ProviderError::Stream(_))));
        let mut r = HashReader::new(&[0u8; 4][..]);
        assert!(matches!(
            r.read_bytes(1 << 40, 4096, "path"),
            Err(ProviderError::Stream(_))
        ));
        let mut sink = Vec::new();
        let mut r = HashReader::new(&[0u8; 10][..]);
        assert!(matches!(
            r.copy_exact(u64::MAX, &mut sink, "content"),
            Err(ProviderError::Stream(_))
        ));
        assert!(sink.len() <= 10, "never more than the stream held");
    }
}
