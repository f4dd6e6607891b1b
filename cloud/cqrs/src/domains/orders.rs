//! E-commerce orders: CreateOrder, AddItem, ConfirmOrder, CancelOrder.
//!
//! State machine: (none) → Draft → Confirmed → Cancelled, or Draft → Cancelled. Items are added
//! only to a draft; a draft is confirmed only with at least one item; a cancelled order stays
//! cancelled. Read models (projection `orders`): `order/<id>` (the order summary) and
//! `customer/<id>` (the customer's orders with their status and totals).

use async_trait::async_trait;
use outrider_store::{Event, StreamFilter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::aggregate::{Aggregate, CommandContext, DomainError};
use crate::projection::{Docs, Projection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OrderStatus {
    #[default]
    None,
    Draft,
    Confirmed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer_id: String,
    pub items: Vec<Item>,
    pub total_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum OrderCommand {
    CreateOrder {
        customer_id: String,
    },
    AddItem {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    ConfirmOrder,
    CancelOrder {
        #[serde(default)]
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    OrderCreated {
        customer_id: String,
    },
    ItemAdded {
        sku: String,
        quantity: u32,
        unit_price_cents: u64,
    },
    OrderConfirmed {
        total_cents: u64,
    },
    OrderCancelled {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order already exists")]
    AlreadyExists,
    #[error("order does not exist")]
    NotFound,
    #[error("order is {0:?}: only a draft can be changed or confirmed")]
    NotDraft(OrderStatus),
    #[error("an order needs at least one item to be confirmed")]
    Empty,
    #[error("order is already cancelled")]
    AlreadyCancelled,
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl DomainError for OrderError {
    fn code(&self) -> &'static str {
        match self {
            OrderError::AlreadyExists => "already_exists",
            OrderError::NotFound => "not_found",
            OrderError::NotDraft(_) => "not_draft",
            OrderError::Empty => "empty_order",
            OrderError::AlreadyCancelled => "already_cancelled",
            OrderError::Invalid(_) => "invalid",
        }
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    const COMMANDS: &'static [&'static str] =
        &["CreateOrder", "AddItem", "ConfirmOrder", "CancelOrder"];
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(
        &self,
        command: &OrderCommand,
        _ctx: &CommandContext<'_>,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus as S;
        match command {
            OrderCommand::CreateOrder { customer_id } => {
                if self.status != S::None {
                    return Err(OrderError::AlreadyExists);
                }
                if customer_id.is_empty() {
                    return Err(OrderError::Invalid("customer_id: empty"));
                }
                Ok(vec![OrderEvent::OrderCreated {
                    customer_id: customer_id.clone(),
                }])
            }
            OrderCommand::AddItem {
                sku,
                quantity,
                unit_price_cents,
            } => {
                match self.status {
                    S::None => return Err(OrderError::NotFound),
                    S::Draft => {}
                    s => return Err(OrderError::NotDraft(s)),
                }
                if *quantity == 0 {
                    return Err(OrderError::Invalid("quantity: must be at least 1"));
                }
                if sku.is_empty() {
                    return Err(OrderError::Invalid("sku: empty"));
                }
                Ok(vec![OrderEvent::ItemAdded {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                }])
            }
            OrderCommand::ConfirmOrder => match self.status {
                S::None => Err(OrderError::NotFound),
                S::Draft if self.items.is_empty() => Err(OrderError::Empty),
                S::Draft => Ok(vec![OrderEvent::OrderConfirmed {
                    total_cents: self.total_cents,
                }]),
                s => Err(OrderError::NotDraft(s)),
            },
            OrderCommand::CancelOrder { reason } => match self.status {
                S::None => Err(OrderError::NotFound),
                S::Cancelled => Err(OrderError::AlreadyCancelled),
                S::Draft | S::Confirmed => Ok(vec![OrderEvent::OrderCancelled {
                    reason: reason.clone(),
                }]),
            },
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated { customer_id } => {
                self.status = OrderStatus::Draft;
                self.customer_id.clone_from(customer_id);
            }
            OrderEvent::ItemAdded {
                sku,
                quantity,
                unit_price_cents,
            } => {
                self.total_cents = self
                    .total_cents
                    .saturating_add(u64::from(*quantity).saturating_mul(*unit_price_cents));
                self.items.push(Item {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price_cents: *unit_price_cents,
                });
            }
            OrderEvent::OrderConfirmed { .. } => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
        }
    }

    fn exists(&self) -> bool {
        self.status != OrderStatus::None
    }
}

/// The `orders` projection: order summaries and per-customer listings.
pub struct OrdersProjection;

#[async_trait]
impl Projection for OrdersProjection {
    fn name(&self) -> &str {
        "orders"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::Prefix("order-".into())
    }

    async fn apply(&self, event: &Event, docs: &mut Docs) -> Result<(), String> {
        let ev: OrderEvent = serde_json::from_str(&event.detail).map_err(|e| e.to_string())?;
        let id = super::aggregate_id(event, "order-");
        let key = format!("order/{id}");
        let summary = docs
            .get_mut(&key, || {
                json!({"order_id": id, "customer_id": "", "status": "Draft", "item_count": 0, "total_cents": 0})
            })
            .await
            .map_err(|e| e.to_string())?;
        match &ev {
            OrderEvent::OrderCreated { customer_id } => {
                summary["customer_id"] = json!(customer_id);
                summary["status"] = json!("Draft");
            }
            OrderEvent::ItemAdded {
                quantity,
                unit_price_cents,
                ..
            } => {
                let items = summary["item_count"].as_u64().unwrap_or(0) + u64::from(*quantity);
                let total = summary["total_cents"].as_u64().unwrap_or(0)
                    + u64::from(*quantity) * unit_price_cents;
                summary["item_count"] = json!(items);
                summary["total_cents"] = json!(total);
            }
            OrderEvent::OrderConfirmed { .. } => summary["status"] = json!("Confirmed"),
            OrderEvent::OrderCancelled { .. } => summary["status"] = json!("Cancelled"),
        }
        summary["version"] = json!(event.version);
        let customer = summary["customer_id"].as_str().unwrap_or("").to_string();
        let line = json!({
            "status": summary["status"],
            "total_cents": summary["total_cents"],
        });
        if !customer.is_empty() {
            let ckey = format!("customer/{customer}");
            let listing = docs
                .get_mut(&ckey, || json!({"customer_id": customer, "orders": {}}))
                .await
                .map_err(|e| e.to_string())?;
            listing["orders"][id.as_str()] = line;
            let count = listing["orders"].as_object().map_or(0, |o| o.len());
            listing["order_count"] = json!(count);
        }
        Ok(())
    }
}
