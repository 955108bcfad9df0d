//! `GetPreferredAllocation`: keeping a container's units on one card where they fit.
//!
//! Sessions run on one card, and a reservation is on one card, so units spread over cards
//! are worth less than the same count on one. The choice: the card that already holds the
//! must-include units, if they are all on one card and it has room; otherwise the card
//! with the fewest available units that still fits the request (best fit, which keeps
//! large holes for large requests). Only when no card fits does the allocation span cards,
//! taking the cards with the most available units first.

use std::collections::{BTreeMap, BTreeSet};

use crate::units::{device_id, parse_device_id};

/// Why no preferred allocation can be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreferError {
    #[error("device {0:?} is not a unit of this plugin (IDs are vpuN-uK)")]
    UnknownDevice(String),
    #[error("allocation size {0} is out of range: at least 1")]
    BadSize(i32),
    #[error("{size} units asked with {must} of them named, but only {available} are available")]
    TooFew {
        size: usize,
        must: usize,
        available: usize,
    },
}

/// Chooses `size` device IDs among `available` (which must include `must_include`).
pub fn preferred(
    available: &[String],
    must_include: &[String],
    size: i32,
) -> Result<Vec<String>, PreferError> {
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or(PreferError::BadSize(size))?;
    let parse =
        |id: &String| parse_device_id(id).ok_or_else(|| PreferError::UnknownDevice(id.clone()));
    let mut free: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for id in available {
        let (card, unit) = parse(id)?;
        free.entry(card).or_default().insert(unit);
    }
    let mut chosen: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for id in must_include {
        let (card, unit) = parse(id)?;
        if let Some(f) = free.get_mut(&card) {
            f.remove(&unit);
        }
        chosen.entry(card).or_default().insert(unit);
    }
    let must = chosen.values().map(BTreeSet::len).sum::<usize>();
    let total = must + free.values().map(BTreeSet::len).sum::<usize>();
    if total < size {
        return Err(PreferError::TooFew {
            size,
            must,
            available: total,
        });
    }
    let mut missing = size.saturating_sub(must);
    // One card that can hold it all: the must-include card, else the best fit.
    let home = match chosen.keys().collect::<Vec<_>>().as_slice() {
        [only] => free
            .get(only)
            .is_some_and(|f| f.len() >= missing)
            .then_some(**only),
        [] => free
            .iter()
            .filter(|(_, f)| f.len() >= missing)
            .min_by_key(|(c, f)| (f.len(), **c))
            .map(|(c, _)| *c),
        _ => None,
    };
    let mut order: Vec<usize> = match home {
        Some(c) => vec![c],
        None => {
            let mut cards: Vec<usize> = free.keys().copied().collect();
            cards.sort_by_key(|c| (std::cmp::Reverse(free[c].len()), *c));
            cards
        }
    };
    order.dedup();
    for card in order {
        if missing == 0 {
            break;
        }
        let take: Vec<u64> = free[&card].iter().copied().take(missing).collect();
        missing -= take.len();
        chosen.entry(card).or_default().extend(take);
    }
    Ok(chosen
        .into_iter()
        .flat_map(|(card, units)| units.into_iter().map(move |u| device_id(card, u)))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(card: usize, units: std::ops::Range<u64>) -> Vec<String> {
        units.map(|u| device_id(card, u)).collect()
    }

    #[test]
    fn best_fit_on_one_card() {
        // Card 0 has 10 free, card 1 has 30 free: 8 go to card 0, 20 to card 1.
        let mut avail = ids(0, 0..10);
        avail.extend(ids(1, 0..30));
        assert_eq!(preferred(&avail, &[], 8).unwrap(), ids(0, 0..8));
        assert_eq!(preferred(&avail, &[], 20).unwrap(), ids(1, 0..20));
    }

    #[test]
    fn must_include_keeps_its_card_and_spanning_is_the_last_resort() {
        let mut avail = ids(0, 0..10);
        avail.extend(ids(1, 0..30));
        let got = preferred(&avail, &[device_id(1, 5)], 3).unwrap();
        assert_eq!(got, vec![device_id(1, 0), device_id(1, 1), device_id(1, 5)]);
        // 35 fit on no card: card 1's 30, then 5 of card 0.
        let got = preferred(&avail, &[], 35).unwrap();
        assert_eq!(got.len(), 35);
        assert_eq!(got.iter().filter(|i| i.starts_with("vpu1-")).count(), 30);
    }

    #[test]
    fn bad_requests_are_errors() {
        let avail = ids(0, 0..4);
        assert_eq!(
            preferred(&avail, &[], 5),
            Err(PreferError::TooFew {
                size: 5,
                must: 0,
                available: 4
            })
        );
        assert_eq!(preferred(&avail, &[], 0), Err(PreferError::BadSize(0)));
        assert_eq!(preferred(&avail, &[], -3), Err(PreferError::BadSize(-3)));
        assert!(matches!(
            preferred(&["gpu0".into()], &[], 1),
            Err(PreferError::UnknownDevice(_))
        ));
    }
}
