//! A reader between the zstd decoder and the tar parser that reads the 512-byte tar headers
//! itself before the `tar` crate sees them, because that crate reads GNU long-name/long-link and
//! pax extension bodies whole into memory before any check can be made. It refuses:
//! extension bodies over [`MAX_EXTENSION_BYTES`], pax records that resize the next entry (the
//! framing here and in the parser would part ways), more decompressed bytes than the manifest
//! allows for ([`TarGuard::new`]'s `budget`), and anything after the end-of-archive marker
//! but zero padding (bounded too).

use std::io::{self, Read};

/// The largest GNU long-name/long-link or pax extension body accepted.
pub const MAX_EXTENSION_BYTES: u64 = 64 << 10;
/// Zero padding accepted after the end-of-archive marker (GNU tar pads to a 10 KiB record).
const MAX_TRAILING_ZEROS: u64 = 1 << 20;
const BLOCK: usize = 512;

enum State {
    /// Expecting a header block.
    Header,
    /// Inside an entry's data (padding included): this many bytes left.
    Data(u64),
    /// Inside a pax extension body, collected to look for `size` records.
    Pax { left: u64, padding: u64 },
    /// After the end-of-archive marker: only zeros may follow.
    End { zeros: u64 },
}

pub struct TarGuard<R> {
    inner: R,
    state: State,
    /// A header block read but not yet handed on.
    block: [u8; BLOCK],
    block_pos: usize,
    block_len: usize,
    pax: Vec<u8>,
    total: u64,
    budget: u64,
}

fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The size field of a tar header: octal, or GNU base-256 when the top bit is set.
fn header_size(block: &[u8; BLOCK]) -> io::Result<u64> {
    let field = &block[124..136];
    if field[0] & 0x80 != 0 {
        let mut bytes = [0u8; 12];
        bytes.copy_from_slice(field);
        bytes[0] &= 0x7f;
        if bytes[..4].iter().any(|b| *b != 0) {
            return Err(refuse("tar header size is out of range".into()));
        }
        return Ok(u64::from_be_bytes(bytes[4..].try_into().expect("8 bytes")));
    }
    let text: Vec<u8> =
        field.iter().copied().take_while(|b| *b != 0 && *b != b' ').skip_while(|b| *b == b' ').collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&text).map_err(|_| refuse("tar header size is not octal".into()))?;
    u64::from_str_radix(text, 8).map_err(|_| refuse("tar header size is not octal".into()))
}

impl<R: Read> TarGuard<R> {
    /// `budget`: the most decompressed bytes the archive may have (the caller derives it from the
    /// manifest: file bytes, headers and padding per entry, and some slack).
    pub fn new(inner: R, budget: u64) -> Self {
        TarGuard {
            inner,
            state: State::Header,
            block: [0; BLOCK],
            block_pos: 0,
            block_len: 0,
            pax: Vec::new(),
            total: 0,
            budget,
        }
    }

    fn count(&mut self, n: usize) -> io::Result<()> {
        self.total += n as u64;
        if self.total > self.budget {
            return Err(refuse(format!(
                "the archive inflates to more than {} bytes, more than its manifest accounts for",
                self.budget
            )));
        }
        Ok(())
    }

    /// Read the next header block whole; `false` at a clean end of input.
    fn fill_block(&mut self) -> io::Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            let n = self.inner.read(&mut self.block[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "tar header cut short"));
            }
            got += n;
        }
        self.count(BLOCK)?;
        self.block_pos = 0;
        self.block_len = BLOCK;
        Ok(true)
    }

    fn inspect_header(&mut self) -> io::Result<()> {
        if self.block.iter().all(|b| *b == 0) {
            // The parser stops at the first zero block: from here on only zeros may come.
            self.state = State::End { zeros: 0 };
            return Ok(());
        }
        let size = header_size(&self.block)?;
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let kind = self.block[156];
        match kind {
            b'L' | b'K' | b'x' | b'g' if size > MAX_EXTENSION_BYTES => {
                return Err(refuse(format!(
                    "a tar extension header ('{}') of {size} bytes; at most {MAX_EXTENSION_BYTES} are accepted",
                    kind as char
                )));
            }
            b'x' | b'g' => {
                self.pax.clear();
                self.state = State::Pax { left: size, padding: padded - size };
                return Ok(());
            }
            _ => {}
        }
        self.state = State::Data(padded);
        Ok(())
    }

    /// A pax body is complete: refuse records that would change the next entry's framing.
    fn check_pax(&self) -> io::Result<()> {
        for record in self.pax.split(|b| *b == b'\n') {
            let key = record.splitn(2, |b| *b == b' ').nth(1).and_then(|kv| kv.split(|b| *b == b'=').next());
            if matches!(key, Some(b"size" | b"GNU.sparse.size" | b"GNU.sparse.realsize" | b"GNU.sparse.major")) {
                return Err(refuse("a pax header resizes or sparsifies an entry; such archives are refused".into()));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.block_pos < self.block_len {
                let n = out.len().min(self.block_len - self.block_pos);
                out[..n].copy_from_slice(&self.block[self.block_pos..self.block_pos + n]);
                self.block_pos += n;
                return Ok(n);
            }
            match self.state {
                State::Header => {
                    if !self.fill_block()? {
                        return Ok(0);
                    }
                    self.inspect_header()?;
                }
                State::Data(0) => self.state = State::Header,
                State::Data(left) => {
                    let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut out[..want])?;
                    if n == 0 {
                        return Ok(0); // Truncated: the parser reports it.
                    }
                    self.count(n)?;
                    self.state = State::Data(left - n as u64);
                    return Ok(n);
                }
                State::Pax { left: 0, padding } => {
                    self.check_pax()?;
                    self.state = State::Data(padding);
                }
                State::Pax { left, padding } => {
                    let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut out[..want])?;
                    if n == 0 {
                        return Ok(0);
                    }
                    self.count(n)?;
                    self.pax.extend_from_slice(&out[..n]);
                    self.state = State::Pax { left: left - n as u64, padding };
                    return Ok(n);
                }
                State::End { zeros } => {
                    let n = self.inner.read(out)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    if out[..n].iter().any(|b| *b != 0) {
                        return Err(refuse("data after the end-of-archive marker".into()));
                    }
                    let zeros = zeros + n as u64;
                    if zeros > MAX_TRAILING_ZEROS {
                        return Err(refuse(format!(
                            "more than {MAX_TRAILING_ZEROS} bytes of padding after the end-of-archive marker"
                        )));
                    }
                    self.state = State::End { zeros };
                    return Ok(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, size: u64) -> [u8; BLOCK] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_path("x").unwrap();
        h.set_cksum();
        *h.as_bytes()
    }

    fn drain(bytes: Vec<u8>, budget: u64) -> io::Result<u64> {
        io::copy(&mut TarGuard::new(bytes.as_slice(), budget), &mut io::sink())
    }

    #[test]
    fn extension_headers_are_capped_before_they_are_read() {
        let mut big = header(b'L', 2 << 30).to_vec();
        big.extend_from_slice(&[b'a'; 4096]);
        let err = drain(big, u64::MAX).unwrap_err().to_string();
        assert!(err.contains("extension header") && err.contains("2147483648"), "{err}");
        let mut ok = header(b'L', 100).to_vec();
        ok.extend_from_slice(&[b'a'; 512]);
        ok.extend_from_slice(&[0; 1024]);
        assert_eq!(drain(ok, u64::MAX).unwrap(), 2048);
    }

    #[test]
    fn only_zeros_may_follow_the_end_marker_and_the_budget_holds() {
        let mut tar = header(b'0', 3).to_vec();
        tar.extend_from_slice(&[1; 512]);
        tar.extend_from_slice(&[0; 1024]);
        let mut garbage = tar.clone();
        garbage.extend_from_slice(b"garbage");
        assert!(drain(garbage, u64::MAX).unwrap_err().to_string().contains("after the end-of-archive"));
        let mut zeros = tar.clone();
        zeros.extend_from_slice(&[0; 9216]);
        assert!(drain(zeros, u64::MAX).is_ok());
        let mut endless = tar.clone();
        endless.extend_from_slice(&vec![0; 2 << 20]);
        assert!(drain(endless, u64::MAX).unwrap_err().to_string().contains("padding"));
        assert!(drain(tar, 1000).unwrap_err().to_string().contains("inflates"));
    }

    #[test]
    fn pax_size_records_are_refused() {
        let body = b"20 size=99999999999\n";
        let mut tar = header(b'x', body.len() as u64).to_vec();
        let mut block = [0u8; BLOCK];
        block[..body.len()].copy_from_slice(body);
        tar.extend_from_slice(&block);
        tar.extend_from_slice(&header(b'0', 0));
        assert!(drain(tar, u64::MAX).unwrap_err().to_string().contains("pax"));
    }
}
