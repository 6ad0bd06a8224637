//! Small string helpers shared across modules.

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary: a
/// client's API key or a pager summary cut without splitting a character.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuts_on_a_character_boundary() {
        let s = "é".repeat(40); // 80 bytes
        assert_eq!(super::truncate(&s, 64).len(), 64);
        assert_eq!(super::truncate(&s, 63).len(), 62);
        assert_eq!(super::truncate("short", 64), "short");
    }
}
