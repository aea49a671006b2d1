//! Acknowledgements: `POST /api/v1/ack`, and the shared path WebSocket `ack` frames use.
//!
//! An ack advances a durable consumer's position (token subject + `client_id`) in one
//! topic, on that topic's owner. Acks are cumulative per topic. Message IDs are unique in
//! the relay (one ID clock per shard), so the topic need not be named: the owners are asked
//! which of the consumer's topics hold the ID in their hot ring, and for IDs the rings no
//! longer hold, the persistent tier settles it. An ID held by no topic is unknown.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;

use super::error::ApiError;
use super::fields::{parse_client_id, parse_message_id};
use super::shard::Shard;
use crate::auth::Principal;
use crate::http::Response;
use crate::rt::mesh::Answer;
use crate::topic::{
    consumer_key, display_name, owner_of, valid_topic_name, ConsumerKey, Located, MessageId,
};

const MAX_IDS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    Acked,
    Unknown,
    Ambiguous,
}

#[derive(Deserialize)]
struct AckBody {
    message_ids: Vec<String>,
    client_id: Option<String>,
    topic: Option<String>,
}

/// Acknowledges `ids` for `consumer` in `topic`, or, without one, in whichever of
/// `candidates` (all the consumer's topics when `None`) holds each ID. Topics the token's
/// `topics` claim does not cover are never candidates: the consumer's positions there may
/// stem from another token of its subject, and this one may neither move them nor learn
/// which IDs they hold (such an ID is as unknown as one that does not exist).
pub async fn acknowledge(
    shard: &Rc<Shard>,
    principal: &Principal,
    consumer: &ConsumerKey,
    ids: &[MessageId],
    topic: Option<Box<str>>,
    candidates: Option<Vec<Box<str>>>,
) -> Vec<AckOutcome> {
    let mut outcomes = vec![AckOutcome::Unknown; ids.len()];
    // Which ID indexes go to which topic.
    let mut per_topic: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
    match topic {
        Some(topic) => {
            per_topic.insert(Arc::from(topic), (0..ids.len()).collect());
        }
        None => {
            let located = locate(shard, consumer, ids, candidates).await;
            let permitted = |key: &Arc<str>| principal.may_use(display_name(key));
            for (i, mut found) in located.into_iter().enumerate() {
                found.held.retain(permitted);
                found.maybe.retain(permitted);
                let holders = if found.held.is_empty() {
                    confirm_in_store(shard, &found.maybe, ids[i]).await
                } else {
                    found.held
                };
                match holders.len() {
                    0 => {}
                    1 => per_topic
                        .entry(Arc::clone(&holders[0]))
                        .or_default()
                        .push(i),
                    _ => outcomes[i] = AckOutcome::Ambiguous,
                }
            }
        }
    }
    let mut groups = Vec::with_capacity(per_topic.len());
    let mut calls = Vec::with_capacity(per_topic.len());
    for (topic, indexes) in per_topic {
        let consumer = consumer.clone();
        let acked: Vec<MessageId> = indexes.iter().map(|&i| ids[i]).collect();
        calls.push((owner_of(&topic, shard.count()), move |s: &Rc<Shard>| {
            s.topics.ack(consumer, topic, acked)
        }));
        groups.push(indexes);
    }
    for (indexes, flags) in groups.into_iter().zip(shard.on_topic_owners(calls).await) {
        for (i, taken) in indexes.into_iter().zip(flags) {
            if taken {
                outcomes[i] = AckOutcome::Acked;
            }
        }
    }
    outcomes
}

/// The topics among `maybe` whose stream holds `id` (an unreachable store holds nothing).
async fn confirm_in_store(shard: &Shard, maybe: &[Arc<str>], id: MessageId) -> Vec<Arc<str>> {
    let mut holders = Vec::new();
    for topic in maybe {
        if shard.store.contains(topic, id).await == Ok(true) {
            holders.push(Arc::clone(topic));
        }
    }
    holders
}

/// Per ID, where it is among `candidates` (else the consumer's topics), on every owner.
async fn locate(
    shard: &Rc<Shard>,
    consumer: &ConsumerKey,
    ids: &[MessageId],
    candidates: Option<Vec<Box<str>>>,
) -> Vec<Located> {
    let targets: Vec<(usize, Option<Vec<Box<str>>>)> = match candidates {
        None => (0..shard.count()).map(|owner| (owner, None)).collect(),
        Some(list) => {
            let mut grouped: Vec<(usize, Option<Vec<Box<str>>>)> = Vec::new();
            for topic in list {
                let owner = owner_of(&topic, shard.count());
                match grouped.iter_mut().find(|(o, _)| *o == owner) {
                    Some((_, Some(topics))) => topics.push(topic),
                    _ => grouped.push((owner, Some(vec![topic]))),
                }
            }
            grouped
        }
    };
    let calls = targets.into_iter().map(|(owner, topics)| {
        let (consumer, ids) = (consumer.clone(), ids.to_vec());
        let work =
            move |s: &Rc<Shard>| Answer::now(s.topics.locate(&consumer, &ids, topics.as_deref()));
        (owner, work)
    });
    let mut merged: Vec<Located> = (0..ids.len()).map(|_| Located::default()).collect();
    for found in shard.on_topic_owners(calls).await {
        for (all, some) in merged.iter_mut().zip(found) {
            all.held.extend(some.held);
            all.maybe.extend(some.maybe);
        }
    }
    merged
}

pub async fn http_ack(
    shard: &Rc<Shard>,
    principal: &Principal,
    body: &[u8],
) -> Result<Response, ApiError> {
    let body: AckBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "INVALID_JSON",
            format!("body must be {{\"message_ids\": [...], \"client_id\": ...}}: {e}"),
        )
    })?;
    let client_id = body.client_id.as_deref().ok_or_else(|| {
        ApiError::invalid(
            "CLIENT_ID_REQUIRED",
            "`client_id` is required: acknowledgements advance the position of a durable consumer",
        )
    })?;
    let consumer = consumer_key(&principal.subject, parse_client_id(client_id)?);
    if body.message_ids.is_empty() || body.message_ids.len() > MAX_IDS {
        return Err(ApiError::invalid(
            "INVALID_BATCH_SIZE",
            format!("`message_ids` must hold 1 to {MAX_IDS} IDs"),
        ));
    }
    let ids = body
        .message_ids
        .iter()
        .map(|text| parse_message_id(text))
        .collect::<Result<Vec<_>, _>>()?;
    let topic = match body.topic {
        Some(topic) if valid_topic_name(&topic) => {
            if !principal.may_use(&topic) {
                return Err(ApiError::topic_forbidden(&topic));
            }
            Some(Box::from(&*super::fields::topic_key(
                shard, principal, &topic,
            )?))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "INVALID_TOPIC",
                "`topic` is not a valid topic name",
            ))
        }
        None => None,
    };
    let outcomes = acknowledge(shard, principal, &consumer, &ids, topic, None).await;
    let with = |wanted: AckOutcome| -> Vec<&String> {
        body.message_ids
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == wanted)
            .map(|(id, _)| id)
            .collect()
    };
    let reply = serde_json::json!({
        "acknowledged": outcomes.iter().filter(|o| **o == AckOutcome::Acked).count(),
        "unknown": with(AckOutcome::Unknown),
        "ambiguous": with(AckOutcome::Ambiguous),
    });
    Ok(Response::json(
        200,
        serde_json::to_vec(&reply).unwrap_or_default(),
    ))
}
