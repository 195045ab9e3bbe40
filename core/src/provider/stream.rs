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
