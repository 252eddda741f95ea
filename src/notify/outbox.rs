//! The outbox of alerts SNS has not taken yet, and how the sender retries them; see [`super`] for the rules.
//! Pure: the sender task in [`super::sender`] does the waiting and the sending.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use super::dedup::AlertKey;
use super::message::Message;

/// Alerts SNS has not taken yet, oldest first, at most one per key; see the module doc for the rules. The sender
/// tries a message as soon as it is queued, so only a message SNS refused (or one queued behind it) can be
/// superseded: with SNS healthy, every digest and recovery goes out in order.
pub(crate) struct Outbox {
    capacity: usize,
    queue: VecDeque<Queued>,
    /// Keys whose last delivered message was a failure digest: a recovery for them is news.
    alerted: HashSet<AlertKey>,
}

#[derive(Debug, Clone)]
struct Queued {
    key: AlertKey,
    message: Message,
    recovery: bool,
}

/// What [`Outbox::push`] did besides queueing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Undelivered messages replaced by the new one (0 or 1).
    pub(crate) superseded: usize,
    /// Oldest messages dropped because the outbox was full.
    pub(crate) dropped: usize,
    /// The new message is a recovery from a failure nobody was told about: not queued.
    pub(crate) cancelled: bool,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            capacity: capacity.max(1),
            queue: VecDeque::new(),
            alerted: HashSet::new(),
        }
    }

    /// Queues `message` for `key` (policy, schedules, `account/region`); `recovery` tells a recovery from a digest.
    pub(crate) fn push(&mut self, key: AlertKey, message: Message, recovery: bool) -> Pushed {
        let mut out = Pushed::default();
        if let Some(i) = self.queue.iter().position(|q| q.key == key) {
            let old = self.queue.remove(i).expect("index from position");
            out.superseded = 1;
            if recovery && !old.recovery && !self.alerted.contains(&key) {
                out.cancelled = true;
                return out;
            }
        }
        self.queue.push_back(Queued {
            key,
            message,
            recovery,
        });
        while self.queue.len() > self.capacity {
            self.queue.pop_front();
            out.dropped += 1;
        }
        out
    }

    /// The next message to send.
    pub(crate) fn front(&self) -> Option<&Message> {
        self.queue.front().map(|q| &q.message)
    }

    /// The front message was delivered.
    pub(crate) fn delivered(&mut self) {
        if let Some(q) = self.queue.pop_front() {
            if q.recovery {
                self.alerted.remove(&q.key);
            } else {
                self.alerted.insert(q.key);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// How the sender task delivers alerts to SNS: the backoff between tries, how many undelivered alerts it keeps,
/// and how long one try may take.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Backoff after the first failure; doubles per consecutive failure, with full jitter.
    pub base: Duration,
    pub cap: Duration,
    /// Undelivered alerts kept in memory.
    pub outbox: usize,
    /// One Publish call, SDK retries included.
    pub attempt_timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
            outbox: 100,
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl Delivery {
    /// Full jitter: uniform in [0, min(cap, base * 2^(failures - 1))], with a floor so the loop never spins.
    pub(super) fn backoff(&self, failures: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.cap);
        let floor = Duration::from_millis(10).min(ceiling);
        ceiling.mul_f64(rand::random::<f64>()).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn msg(subject: &str) -> Message {
        Message {
            subject: subject.into(),
            body: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    fn key(schedule: &str) -> AlertKey {
        ("prod".into(), schedule.into(), "us-east-1".into())
    }

    #[test]
    fn outbox_supersedes_per_key_and_drops_the_oldest_when_full() {
        let mut o = Outbox::new(2);
        assert_eq!(o.push(key("a"), msg("a1"), false), Pushed::default());
        assert_eq!(o.push(key("b"), msg("b1"), false), Pushed::default());
        // A newer failure of `a` replaces the undelivered one and goes to the back.
        let p = o.push(key("a"), msg("a2"), false);
        assert_eq!((p.superseded, p.dropped, p.cancelled), (1, 0, false));
        assert_eq!(o.front().unwrap().subject, "b1");
        // Full: the oldest (b1) goes.
        let p = o.push(key("c"), msg("c1"), false);
        assert_eq!((p.superseded, p.dropped), (0, 1));
        assert_eq!(o.len(), 2);
        assert_eq!(o.front().unwrap().subject, "a2");
    }

    #[test]
    fn outbox_recovery_of_an_unheard_failure_is_not_sent() {
        let mut o = Outbox::new(10);
        o.push(key("a"), msg("fail"), false);
        let p = o.push(key("a"), msg("recovered"), true);
        assert!(p.cancelled && p.superseded == 1, "{p:?}");
        assert!(o.is_empty());
        // Once a failure was delivered, a recovery replacing a later undelivered failure is sent.
        o.push(key("a"), msg("fail"), false);
        o.delivered();
        o.push(key("a"), msg("fail again"), false);
        let p = o.push(key("a"), msg("recovered"), true);
        assert!(!p.cancelled && p.superseded == 1, "{p:?}");
        assert_eq!(o.front().unwrap().subject, "recovered");
        o.delivered();
        // After the recovery went out, the key is quiet again.
        o.push(key("a"), msg("fail 3"), false);
        assert!(o.push(key("a"), msg("recovered"), true).cancelled);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let r = Delivery {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            ..Delivery::default()
        };
        for failures in 1..40 {
            let b = r.backoff(failures);
            assert!(
                b <= Duration::from_millis(400) && b >= Duration::from_millis(10),
                "{b:?}"
            );
        }
        assert!(r.backoff(1) <= Duration::from_millis(100));
    }
}
