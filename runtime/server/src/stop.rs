//! Stop strings over streamed text. A stop string may span several tokens, so text that could
//! be the start of one is held back until it is known not to be; the stop string itself is never
//! emitted (OpenAI's behaviour).

/// Watches streamed text for any of a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: it may be the start of a stop string.
    pending: String,
}

impl StopMatcher {
    /// `stops` must not contain empty strings (the request parser refuses them).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns what can be emitted now and whether a stop string was found (then
    /// the returned text is everything before it, and generation should end).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let keep = self.held_back();
        let out = self.pending[..self.pending.len() - keep].to_string();
        self.pending.drain(..self.pending.len() - keep);
        (out, false)
    }

    /// The text still held back, at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn held_back(&self) -> usize {
        let p = &self.pending;
        self.stops
            .iter()
            .flat_map(|s| {
                (1..s.len().min(p.len() + 1))
                    .rev()
                    .filter(|&n| s.is_char_boundary(n) && p.ends_with(&s[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (text, stopped) = m.push(p);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stops_across_pieces_and_excludes_the_stop() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxy"]),
            ("abc".into(), true)
        );
        assert_eq!(run(&["END"], &["ab", "cE", "N"]), ("abcEN".into(), false));
        assert_eq!(
            run(&["\n\n", "x"], &["a\n", "b\n\n"]),
            ("a\nb".into(), true)
        );
        assert_eq!(run(&["é!"], &["aé", "é", "!"]), ("aé".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn holds_back_only_what_may_start_a_stop() {
        let mut m = StopMatcher::new(&["abc".to_string()]);
        assert_eq!(m.push("xxab"), ("xx".into(), false));
        assert_eq!(m.push("d"), ("abd".into(), false));
    }

    proptest! {
        /// Streaming in any split gives the text before the first stop string, or all of it.
        #[test]
        fn matches_the_whole_text_rule(
            text in "[ab\u{e9}]{0,30}",
            stop in "[ab\u{e9}]{1,3}",
            cuts in prop::collection::vec(0usize..40, 0..6),
        ) {
            let mut bounds: Vec<usize> = cuts.into_iter()
                .map(|c| c.min(text.len()))
                .filter(|&c| text.is_char_boundary(c))
                .collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort();
            let pieces: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let expected = match text.find(&stop) {
                Some(at) => (text[..at].to_string(), true),
                None => (text.clone(), false),
            };
            prop_assert_eq!(run(&[stop.as_str()], &pieces), expected);
        }
    }
}
