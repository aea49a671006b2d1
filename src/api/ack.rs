//! Acknowledgements: `POST /api/v1/ack`, and the shared path WebSocket `ack` frames use.
//!
//! An ack advances a durable consumer's position (token subject + `client_id`) in the
//! topic that holds the message, on that topic's owner. Acks are cumulative per topic.
//! When the caller does not name the topic, the owners are asked to find it.

use std::rc::Rc;

use serde::Deserialize;

use super::error::ApiError;
use super::parse_client_id;
use crate::auth::Principal;
use crate::http::Response;
use crate::shard::owner::{Op, OpResult};
use crate::shard::{spawn_local, Shard};
use crate::topic::{consumer_key, owner_of, valid_topic_name, ConsumerKey, MessageId};

const MAX_IDS: usize = 1000;

#[derive(Deserialize)]
struct AckBody {
    message_ids: Vec<String>,
    client_id: Option<String>,
    topic: Option<String>,
}

/// Acknowledges `ids` for `consumer`. `topics` lists candidate topics (grouped to their
/// owners); `None` asks every shard. Returns, per ID, whether some topic took it.
pub async fn acknowledge(
    shard: &Rc<Shard>,
    consumer: &ConsumerKey,
    ids: &[MessageId],
    topics: Option<Vec<Box<str>>>,
) -> Vec<bool> {
    let targets: Vec<(usize, Option<Vec<Box<str>>>)> = match topics {
        None => (0..shard.count).map(|owner| (owner, None)).collect(),
        Some(list) => {
            let mut grouped: Vec<(usize, Option<Vec<Box<str>>>)> = Vec::new();
            for topic in list {
                let owner = owner_of(&topic, shard.count);
                match grouped.iter_mut().find(|(o, _)| *o == owner) {
                    Some((_, Some(topics))) => topics.push(topic),
                    _ => grouped.push((owner, Some(vec![topic]))),
                }
            }
            grouped
        }
    };
    let mut calls = Vec::new();
    for (owner, topics) in targets {
        let op = Op::Ack {
            consumer: consumer.clone(),
            ids: ids.to_vec(),
            topics,
        };
        let shard = Rc::clone(shard);
        calls.push(spawn_local(async move { shard.call(owner, op).await }));
    }
    let mut taken = vec![false; ids.len()];
    for call in calls {
        if let OpResult::Acked(flags) = call.await {
            for (t, f) in taken.iter_mut().zip(flags) {
                *t |= f;
            }
        }
    }
    taken
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
        .map(|text| {
            MessageId::parse(text).ok_or_else(|| {
                ApiError::invalid(
                    "INVALID_MESSAGE_ID",
                    format!("{text:?} is not a message ID (ms-seq)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let topics = match body.topic {
        Some(topic) if valid_topic_name(&topic) => Some(vec![topic.into_boxed_str()]),
        Some(_) => {
            return Err(ApiError::invalid(
                "INVALID_TOPIC",
                "`topic` is not a valid topic name",
            ))
        }
        None => None,
    };
    let taken = acknowledge(shard, &consumer, &ids, topics).await;
    let unknown: Vec<&String> = body
        .message_ids
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|(id, _)| id)
        .collect();
    let reply = serde_json::json!({
        "acknowledged": taken.iter().filter(|t| **t).count(),
        "unknown": unknown,
    });
    Ok(Response::json(
        200,
        serde_json::to_vec(&reply).unwrap_or_default(),
    ))
}
