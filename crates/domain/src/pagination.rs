//! Cursor pagination shared by every list.

use crate::{DomainError, DomainResult};

/// A page size, 1..=200 (default 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    /// Default page size.
    pub const DEFAULT: Limit = Limit(50);
    /// Largest page.
    pub const MAX: u32 = 200;

    /// Checks the range.
    pub fn new(n: i64) -> DomainResult<Self> {
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(Self)
            .ok_or_else(|| DomainError::invalid("limit", "must be between 1 and 200"))
    }

    /// The size.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// Where a page starts: after the item with this key (an id as u128, or a sequence number).
/// On the wire it is opaque: 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(u128);

impl Cursor {
    /// A cursor after `key`.
    pub const fn after(key: u128) -> Self {
        Self(key)
    }

    /// The key to continue after.
    pub const fn key(self) -> u128 {
        self.0
    }

    /// Parses the wire form.
    pub fn parse(s: &str) -> DomainResult<Self> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            u128::from_str_radix(s, 16).map(Self).map_err(|_| bad_cursor())
        } else {
            Err(bad_cursor())
        }
    }

    /// The wire form.
    pub fn encode(self) -> String {
        format!("{:032x}", self.0)
    }
}

fn bad_cursor() -> DomainError {
    DomainError::invalid("cursor", "is not a cursor this API returned")
}

/// A page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Continue after this item.
    pub after: Option<Cursor>,
    /// Page size.
    pub limit: Limit,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { after: None, limit: Limit::DEFAULT }
    }
}

/// A page of items and the cursor of the next page, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// Items in order.
    pub items: Vec<T>,
    /// Cursor for the next page; `None` at the end.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched items: the extra one only proves a next page exists.
    pub fn from_overfetch(mut items: Vec<T>, limit: Limit, key: impl Fn(&T) -> u128) -> Self {
        let limit = limit.get() as usize;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| Cursor::after(key(last)))
        } else {
            None
        };
        Self { items, next }
    }

    /// Maps the items, keeping the cursor.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next: self.next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bounded() {
        assert!(Limit::new(0).is_err());
        assert!(Limit::new(201).is_err());
        assert!(Limit::new(-1).is_err());
        assert_eq!(Limit::new(200).map(Limit::get), Ok(200));
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = Cursor::after(0x0123_4567_89ab_cdef_u128 << 64);
        assert_eq!(Cursor::parse(&c.encode()), Ok(c));
        for bad in ["", "xyz", "0123", &"G".repeat(32), &"A".repeat(32)] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overfetch_sets_the_next_cursor() {
        let limit = Limit::new(2).expect("valid");
        let page = Page::from_overfetch(vec![1u128, 2, 3], limit, |x| *x);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next, Some(Cursor::after(2)));
        assert_eq!(Page::from_overfetch(vec![1u128, 2], limit, |x| *x).next, None);
    }
}
