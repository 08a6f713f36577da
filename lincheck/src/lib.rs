//! A linearizability checker for the histories that cluster tests record.
//!
//! A test records, for every operation a client ran, when it was invoked, when its answer
//! came back (if it did) and what the answer was. [`check`] decides whether the history is
//! linearizable against a sequential [`Model`]: whether every operation can be given one
//! instant between its invocation and its answer at which it took effect, so that the model,
//! stepping through the operations in that order, produces exactly the answers observed.
//!
//! The algorithm is Wing and Gong's search with Lowe's memoisation (as in Horn and Kroening,
//! "Faster linearizability checking via P-compositionality", and Porcupine): linearize an
//! operation that may come next, backtrack when the model disagrees, and never visit the same
//! (set of linearized operations, model state) twice. Histories are checked per key
//! ([`check_per_key`]) when the model's keys are independent, which keeps each search small.
//!
//! An operation whose outcome the client never learned (a timeout, a dead node: "may have
//! happened") has no return time and no answer: it may take effect at any instant after its
//! invocation, with any answer, or never.
//!
//! What it is not: a model of the namespace. Tests bring their own small [`Model`]s.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash;
    /// What an operation asks for.
    type Input;
    /// What an operation answered.
    type Output;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// Applies `input` to `state`. With `Some(output)`, returns the next state only if the
    /// operation, run on `state`, answers `output`; with `None` (the outcome is unknown), the
    /// next state whatever the answer.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// When it was invoked (any monotonic clock shared by the clients, e.g. nanoseconds since
    /// the test began).
    pub call: u64,
    /// When the answer came back, and the answer; `None` if it never did.
    pub ret: Option<(u64, O)>,
    /// What it asked for.
    pub input: I,
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The longest prefix of operations (indexes into the history) that could be linearized.
    pub longest: Vec<usize>,
    /// Operations with an answer that no linearization of that prefix could place next.
    pub stuck: Vec<usize>,
}

/// Whether `history` is linearizable against `model`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Result<(), Violation> {
    let n = history.len();
    let words = n.div_ceil(64);
    let done_target = history.iter().filter(|o| o.ret.is_some()).count();
    let ret_time = |i: usize| history[i].ret.as_ref().map_or(u64::MAX, |(t, _)| *t);
    // Operations in order of invocation: the candidates to go next are a prefix of the ones
    // not linearized yet (all invoked before the earliest answer among them).
    let mut by_call: Vec<usize> = (0..n).collect();
    by_call.sort_by_key(|&i| (history[i].call, i));

    struct Frame<S> {
        state: S,
        linearized: Vec<u64>,
        answered: usize,
        /// Position in `by_call` of the next candidate to try from this frame.
        next: usize,
        path_len: usize,
    }
    let is_set = |bits: &[u64], i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut path: Vec<usize> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut stack = vec![Frame {
        state: model.init(),
        linearized: vec![0; words],
        answered: 0,
        next: 0,
        path_len: 0,
    }];
    while let Some(top) = stack.last_mut() {
        if top.answered == done_target {
            return Ok(());
        }
        path.truncate(top.path_len);
        // The earliest answer among the operations not linearized: nothing invoked after it
        // may go before it.
        let horizon = (0..n)
            .filter(|&i| !is_set(&top.linearized, i))
            .map(ret_time)
            .min()
            .unwrap_or(u64::MAX);
        let mut pushed = None;
        while top.next < n {
            let i = by_call[top.next];
            top.next += 1;
            if is_set(&top.linearized, i) {
                continue;
            }
            if history[i].call > horizon {
                top.next = n;
                break;
            }
            let op = &history[i];
            let Some(state) = model.step(&top.state, &op.input, op.ret.as_ref().map(|(_, o)| o))
            else {
                continue;
            };
            let mut linearized = top.linearized.clone();
            linearized[i / 64] |= 1 << (i % 64);
            if !seen.insert((linearized.clone(), state.clone())) {
                continue;
            }
            pushed = Some(Frame {
                state,
                linearized,
                answered: top.answered + usize::from(op.ret.is_some()),
                next: 0,
                path_len: top.path_len + 1,
            });
            path.push(i);
            break;
        }
        match pushed {
            Some(f) => {
                if path.len() > longest.len() {
                    longest = path.clone();
                }
                stack.push(f);
            }
            None => {
                stack.pop();
            }
        }
    }
    // Nothing fits: report where the longest attempt got stuck.
    let mut linearized = vec![0u64; words];
    for &i in &longest {
        linearized[i / 64] |= 1 << (i % 64);
    }
    let horizon = (0..n)
        .filter(|&i| !is_set(&linearized, i))
        .map(ret_time)
        .min()
        .unwrap_or(u64::MAX);
    let stuck = (0..n)
        .filter(|&i| {
            !is_set(&linearized, i) && history[i].ret.is_some() && history[i].call <= horizon
        })
        .collect();
    Err(Violation { longest, stuck })
}

/// Checks each key's operations on its own (valid when operations on different keys never
/// constrain each other: P-compositionality). Returns the first key whose history is not
/// linearizable, with the violation.
pub fn check_per_key<K, M>(
    model: &M,
    history: impl IntoIterator<Item = (K, Operation<M::Input, M::Output>)>,
) -> Result<(), (K, Violation)>
where
    K: Ord + Clone,
    M: Model,
{
    type History<M> = Vec<Operation<<M as Model>::Input, <M as Model>::Output>>;
    let mut keys: std::collections::BTreeMap<K, History<M>> = Default::default();
    for (k, op) in history {
        keys.entry(k).or_default().push(op);
    }
    for (k, ops) in keys {
        check(model, &ops).map_err(|v| (k.clone(), v))?;
    }
    Ok(())
}

/// A model for one name in a directory: it exists or not. Creating an existing name answers
/// `Exists`, removing a missing one `Missing`; a lookup answers whether it exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct Entry;

/// What [`Entry`] operations ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryOp {
    /// Create the name (mkdir, create with O_EXCL).
    Create,
    /// Remove it (rmdir, unlink).
    Remove,
    /// Look it up (stat).
    Lookup,
}

/// What [`Entry`] operations answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryAnswer {
    /// Done (a create or remove), or found (a lookup).
    Ok,
    /// The name was there already (EEXIST).
    Exists,
    /// The name was not there (ENOENT).
    Missing,
}

impl Model for Entry {
    type State = bool;
    type Input = EntryOp;
    type Output = EntryAnswer;

    fn init(&self) -> bool {
        false
    }

    fn step(&self, exists: &bool, op: &EntryOp, out: Option<&EntryAnswer>) -> Option<bool> {
        let (answer, next) = match (op, *exists) {
            (EntryOp::Create, false) => (EntryAnswer::Ok, true),
            (EntryOp::Create, true) => (EntryAnswer::Exists, true),
            (EntryOp::Remove, true) => (EntryAnswer::Ok, false),
            (EntryOp::Remove, false) => (EntryAnswer::Missing, false),
            (EntryOp::Lookup, true) => (EntryAnswer::Ok, true),
            (EntryOp::Lookup, false) => (EntryAnswer::Missing, false),
        };
        match out {
            Some(o) if *o != answer => None,
            _ => Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EntryAnswer::*;
    use EntryOp::*;

    fn op(
        call: u64,
        ret: u64,
        input: EntryOp,
        out: EntryAnswer,
    ) -> Operation<EntryOp, EntryAnswer> {
        Operation {
            call,
            ret: Some((ret, out)),
            input,
        }
    }

    fn pending(call: u64, input: EntryOp) -> Operation<EntryOp, EntryAnswer> {
        Operation {
            call,
            ret: None,
            input,
        }
    }

    #[test]
    fn sequential_histories() {
        let ok = [
            op(0, 1, Create, Ok),
            op(2, 3, Lookup, Ok),
            op(4, 5, Remove, Ok),
        ];
        assert!(check(&Entry, &ok).is_ok());
        // A lookup after an acknowledged create that does not find the name.
        let stale = [op(0, 1, Create, Ok), op(2, 3, Lookup, Missing)];
        let v = check(&Entry, &stale).expect_err("stale read");
        assert_eq!(v.longest, vec![0]);
        assert_eq!(v.stuck, vec![1]);
        // Two acknowledged creates of one name, one after the other.
        let twice = [op(0, 1, Create, Ok), op(2, 3, Create, Ok)];
        assert!(check(&Entry, &twice).is_err());
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // The lookup overlaps the create: it may see the name or not.
        for seen in [Ok, Missing] {
            let h = [op(0, 10, Create, Ok), op(5, 6, Lookup, seen)];
            assert!(check(&Entry, &h).is_ok(), "{seen:?}");
        }
        // Two overlapping creates: exactly one wins.
        let h = [op(0, 10, Create, Exists), op(1, 9, Create, Ok)];
        assert!(check(&Entry, &h).is_ok());
        let h = [op(0, 10, Create, Ok), op(1, 9, Create, Ok)];
        assert!(check(&Entry, &h).is_err());
    }

    #[test]
    fn an_unknown_outcome_may_have_happened_or_not() {
        // A create whose answer was lost, then a lookup finding the name: it happened.
        let h = [pending(0, Create), op(5, 6, Lookup, Ok)];
        assert!(check(&Entry, &h).is_ok());
        // ... or a lookup not finding it: it did not (yet).
        let h = [
            pending(0, Create),
            op(5, 6, Lookup, Missing),
            op(7, 8, Lookup, Ok),
        ];
        assert!(check(&Entry, &h).is_ok());
        // But a lost answer cannot make a name vanish that an acknowledged create made.
        let h = [
            op(0, 1, Create, Ok),
            pending(2, Lookup),
            op(3, 4, Lookup, Missing),
        ];
        assert!(check(&Entry, &h).is_err());
        // An unknown operation does not take effect before it was invoked.
        let h = [op(0, 1, Lookup, Ok), pending(2, Create)];
        assert!(check(&Entry, &h).is_err());
    }

    #[test]
    fn per_key_checks_each_name_alone() {
        let h = vec![
            ("a", op(0, 1, Create, Ok)),
            ("b", op(0, 1, Lookup, Missing)),
            ("a", op(2, 3, Lookup, Ok)),
            ("b", op(2, 3, Create, Ok)),
        ];
        assert!(check_per_key(&Entry, h.clone()).is_ok());
        let mut bad = h;
        bad.push(("b", op(4, 5, Remove, Missing)));
        let (k, _) = check_per_key(&Entry, bad).expect_err("b was there");
        assert_eq!(k, "b");
    }

    /// Brute force for small histories: some permutation of the answered operations (plus
    /// any subset of the unknown ones) respects real time and the model.
    fn brute(h: &[Operation<EntryOp, EntryAnswer>]) -> bool {
        fn go(h: &[Operation<EntryOp, EntryAnswer>], used: &mut Vec<bool>, state: bool) -> bool {
            if h.iter()
                .zip(used.iter())
                .all(|(o, u)| *u || o.ret.is_none())
            {
                return true;
            }
            for i in 0..h.len() {
                if used[i] {
                    continue;
                }
                // i may go next only if no other unused op answered before i was invoked.
                let blocked = h.iter().enumerate().any(|(j, o)| {
                    j != i && !used[j] && o.ret.as_ref().is_some_and(|(t, _)| *t < h[i].call)
                });
                if blocked {
                    continue;
                }
                if let Some(next) =
                    Entry.step(&state, &h[i].input, h[i].ret.as_ref().map(|(_, o)| o))
                {
                    used[i] = true;
                    if go(h, used, next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        go(h, &mut vec![false; h.len()], false)
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_brute_force(ops in proptest::collection::vec(
            (0u64..20, 1u64..8, 0u8..3, 0u8..4), 0..7)
        ) {
            let h: Vec<_> = ops.iter().map(|&(call, len, input, out)| {
                let input = [Create, Remove, Lookup][input as usize];
                match out {
                    3 => pending(call, input),
                    o => op(call, call + len, input, [Ok, Exists, Missing][o as usize]),
                }
            }).collect();
            proptest::prop_assert_eq!(check(&Entry, &h).is_ok(), brute(&h));
        }
    }
}
