//! A bounds-checked reader for big-endian body fields.
//!
//! `bytes::Buf` panics when a field runs past the end of the buffer; a frame from the
//! network must never make us panic, so bodies are read through [`Reader`], which turns
//! every short read into [`DecodeError::Truncated`].

use crate::error::DecodeError;

/// Reads big-endian fields from a body, refusing to read past its end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Takes the next `N` bytes, or fails naming the field that did not fit.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(DecodeError::Truncated { field });
        };
        self.bytes = rest;
        Ok(*head)
    }

    pub(crate) fn slice(
        &mut self,
        len: usize,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// Peeks at the next `u16` without consuming it.
    pub(crate) fn peek_u16(&self) -> Option<u16> {
        self.bytes.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Succeeds only if the whole body was read: trailing bytes are malformed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { count: self.bytes.len() })
        }
    }
}
