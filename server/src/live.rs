//! The live channel, server side: `GET /api/v1/live` upgrades to a WebSocket that
//! sends a snapshot (devices and recent commands), then every event, as JSON text.
//! A client that falls too far behind gets a fresh snapshot instead of a gap.

use axum::{
    extract::{
        State, WebSocketUpgrade,
        ws::{Message, WebSocket},
    },
    response::Response,
};
use protocol::api::LiveEvent;
use tokio::sync::broadcast::error::RecvError;

use crate::hub::Hub;

/// Recent commands in each snapshot.
const SNAPSHOT_COMMANDS: usize = 200;

pub async fn upgrade(socket: WebSocketUpgrade, State(hub): State<Hub>) -> Response {
    socket.on_upgrade(move |socket| serve(socket, hub))
}

async fn serve(mut socket: WebSocket, hub: Hub) {
    let (snapshot, mut events) = hub.subscribe(SNAPSHOT_COMMANDS);
    if send(&mut socket, &snapshot).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if send(&mut socket, &event).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!("a live client missed {missed} events; resyncing it");
                    let (snapshot, fresh) = hub.subscribe(SNAPSHOT_COMMANDS);
                    events = fresh;
                    if send(&mut socket, &snapshot).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                // Clients have nothing to say; pings are answered by axum.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send(socket: &mut WebSocket, event: &LiveEvent) -> Result<(), axum::Error> {
    // Serializing these types cannot fail: strings, numbers and JSON values only.
    let text = serde_json::to_string(event).expect("live events always serialize");
    socket.send(Message::Text(text.into())).await
}
