//! The in-process bus for the micro cloud: every role in one process, no server.
//!
//! Subscriptions live in one table behind a read-write lock; publishing takes the read lock,
//! matches each filter and pushes the message into the subscriber's unbounded channel, so a
//! publish never waits on a slow subscriber and messages from one publisher arrive in the
//! order they were sent. Queue groups pick one live member per group round-robin.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::subject::{self, Filter};
use crate::{Bus, BusError, Message, Subscription};

/// A bus whose subscribers all live in this process. Clones share the same subscriptions.
#[derive(Clone, Default)]
pub struct InProcBus {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    entries: RwLock<Vec<Entry>>,
    next_id: AtomicU64,
    /// Rotates the queue-group member chosen for each message.
    group_cursor: AtomicUsize,
}

/// One subscription in the table.
struct Entry {
    id: u64,
    filter: Filter,
    group: Option<String>,
    sender: mpsc::UnboundedSender<Message>,
}

impl InProcBus {
    /// An empty bus.
    pub fn new() -> InProcBus {
        InProcBus::default()
    }

    /// How many subscriptions are currently registered (inboxes of pending requests included).
    pub fn subscription_count(&self) -> usize {
        self.shared
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn add(&self, filter: &str, group: Option<&str>) -> Result<Subscription, BusError> {
        let filter = Filter::parse(filter)?;
        if let Some(group) = group {
            subject::validate_queue_group(group)?;
        }
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Entry {
                id,
                filter,
                group: group.map(str::to_string),
                sender,
            });
        let stream = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx));
        let weak = Arc::downgrade(&self.shared);
        Ok(Subscription::new(
            Box::pin(stream),
            Some(Box::new(move || remove_entry(&weak, id))),
        ))
    }

    /// Hands the message to every matching plain subscriber and to one member of each
    /// matching queue group. Returns how many subscriptions received it.
    fn deliver(&self, subject: &str, reply: Option<&str>, payload: Bytes) -> usize {
        let message = Message {
            subject: subject.to_string(),
            reply: reply.map(str::to_string),
            payload,
        };
        let entries = self
            .shared
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut delivered = 0;
        // Allocated only when a queue group matches.
        let mut groups: Vec<(&str, Vec<&Entry>)> = Vec::new();
        for entry in entries.iter().filter(|e| e.filter.matches(subject)) {
            match &entry.group {
                None => delivered += usize::from(entry.sender.send(message.clone()).is_ok()),
                Some(group) => match groups.iter_mut().find(|(name, _)| *name == group) {
                    Some((_, members)) => members.push(entry),
                    None => groups.push((group, vec![entry])),
                },
            }
        }
        if !groups.is_empty() {
            // One turn per message, shared by every group it reaches, so each group rotates.
            let turn = self.shared.group_cursor.fetch_add(1, Ordering::Relaxed);
            for (_, members) in &groups {
                delivered += usize::from(deliver_to_one(members, turn, &message));
            }
        }
        delivered
    }
}

/// Sends to one member of a queue group, chosen by `turn`, skipping members whose receiver
/// is gone.
fn deliver_to_one(members: &[&Entry], turn: usize, message: &Message) -> bool {
    (0..members.len()).any(|offset| {
        let member = members[turn.wrapping_add(offset) % members.len()];
        member.sender.send(message.clone()).is_ok()
    })
}

/// Removes a subscription from the table, if the bus still exists.
fn remove_entry(shared: &Weak<Shared>, id: u64) {
    if let Some(shared) = shared.upgrade() {
        shared
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|entry| entry.id != id);
    }
}

#[async_trait]
impl Bus for InProcBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        subject::validate_publish(subject)?;
        self.deliver(subject, None, payload);
        Ok(())
    }

    async fn publish_with_reply(
        &self,
        subject: &str,
        reply: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        subject::validate_publish(subject)?;
        subject::validate_publish(reply)?;
        self.deliver(subject, Some(reply), payload);
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        self.add(subject, None)
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription, BusError> {
        self.add(subject, Some(group))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        subject::validate_publish(subject)?;
        let inbox = self.new_inbox();
        let mut replies = self.add(&inbox, None)?;
        if self.deliver(subject, Some(&inbox), payload) == 0 {
            return Err(BusError::NoResponders(subject.to_string()));
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout {
                subject: subject.to_string(),
                timeout,
            }),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_subscriptions_and_finished_requests_leave_the_table() {
        let bus = InProcBus::new();
        let first = bus.subscribe("a.>").await.unwrap();
        let _second = bus.queue_subscribe("a.b", "g").await.unwrap();
        assert_eq!(bus.subscription_count(), 2);
        drop(first);
        assert_eq!(bus.subscription_count(), 1);
        let outcome = bus
            .request("a.b", Bytes::new(), Duration::from_millis(10))
            .await;
        assert!(matches!(outcome, Err(BusError::Timeout { .. })));
        assert_eq!(
            bus.subscription_count(),
            1,
            "the request inbox must be removed"
        );
    }

    #[tokio::test]
    async fn a_queue_member_whose_receiver_is_gone_is_skipped() {
        let bus = InProcBus::new();
        let mut alive = bus.queue_subscribe("q", "g").await.unwrap();
        let mut dead = bus.queue_subscribe("q", "g").await.unwrap();
        // Close the receiver without removing the entry, as a racing drop would.
        dead.stream = Box::pin(futures::stream::empty());
        for n in 0..10u8 {
            bus.publish("q", Bytes::from(vec![n])).await.unwrap();
        }
        for n in 0..10u8 {
            assert_eq!(alive.next().await.unwrap().payload.as_ref(), &[n]);
        }
        assert!(dead.next().await.is_none());
    }
}
