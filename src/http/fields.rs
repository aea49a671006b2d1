//! A request's header fields, owned as one text.
//!
//! The decoder copies every field of a head into one `String` (each name lower-cased, each
//! value trimmed) and keeps where each one starts and ends: two allocations per request,
//! however many fields it has, instead of two per field (a publish carries four or five).
//! Everything reads the fields as `&str` pairs.
//!
//! Owns the layout only; what a field means is the decoder's and the routes' business.

/// Where one field lies in the text: the name from `name` to `value`, the value from
/// `value` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    name: usize,
    value: usize,
    end: usize,
}

/// Header fields in arrival order; names lower-case, values trimmed of surrounding spaces
/// and tabs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    text: String,
    spans: Vec<Span>,
}

impl Fields {
    /// Room for `count` fields holding `bytes` bytes in all, so that filling it does not
    /// grow it.
    pub fn with_capacity(bytes: usize, count: usize) -> Self {
        Fields {
            text: String::with_capacity(bytes),
            spans: Vec::with_capacity(count),
        }
    }

    /// Appends a field; `name` is stored lower-cased.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text
            .extend(name.chars().map(|c| c.to_ascii_lowercase()));
        let value_at = self.text.len();
        self.text.push_str(value);
        self.spans.push(Span {
            name: start,
            value: value_at,
            end: self.text.len(),
        });
    }

    /// Every field as (name, value), in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        self.spans
            .iter()
            .map(|s| (&self.text[s.name..s.value], &self.text[s.value..s.end]))
    }

    /// The first field with this name, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Fields {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Self {
        let mut fields = Fields::default();
        for (name, value) in pairs {
            fields.push(name, value);
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_order_lower_case_names_and_exact_values() {
        let fields: Fields = [("Host", "a"), ("X-Key", "Mixed Case"), ("host", "")]
            .into_iter()
            .collect();
        let pairs: Vec<_> = fields.iter().collect();
        assert_eq!(
            pairs,
            vec![("host", "a"), ("x-key", "Mixed Case"), ("host", "")]
        );
        assert_eq!(fields.get("HOST"), Some("a"), "the first of two");
        assert_eq!(fields.get("x-KEY"), Some("Mixed Case"));
        assert_eq!(fields.get("missing"), None);
        assert_eq!(fields.len(), 3);
        assert!(Fields::default().is_empty());
    }

    #[test]
    fn filling_within_the_capacity_does_not_reallocate() {
        let mut fields = Fields::with_capacity(64, 4);
        let (text, spans) = (fields.text.as_ptr(), fields.spans.as_ptr());
        for (name, value) in [("Host", "x"), ("Content-Type", "application/json")] {
            fields.push(name, value);
        }
        assert_eq!(fields.text.as_ptr(), text);
        assert_eq!(fields.spans.as_ptr(), spans);
    }
}
