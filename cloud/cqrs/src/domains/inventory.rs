//! Inventory across warehouses: AddProduct, AdjustStock, ReserveStock, ReleaseStock, RecordSale.
//!
//! One aggregate per SKU (`sku-<sku>`) holding every warehouse's `on_hand` and `reserved`;
//! `available = on_hand - reserved`, never negative. Reservations are checked against the state
//! the append is conditional on (`ExpectedVersion::Exact`): concurrent reservers race, losers
//! reload and decide again, so the SKU is never oversold — a reservation that no longer fits is
//! the typed [`InventoryError::OutOfStock`]. `LowStock` is appended when the SKU's total
//! available crosses below its threshold (once per crossing). Read model (projection
//! `inventory`): `sku/<sku>` and `low-stock` (the SKUs now below their threshold).

use std::collections::BTreeMap;

use async_trait::async_trait;
use outrider_store::{Event, StreamFilter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::aggregate::{Aggregate, CommandContext, DomainError};
use crate::projection::{Docs, Projection};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    pub on_hand: u64,
    pub reserved: u64,
}

impl Stock {
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub warehouse: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub exists: bool,
    pub name: String,
    pub low_stock_threshold: u64,
    pub warehouses: BTreeMap<String, Stock>,
    pub reservations: BTreeMap<String, Reservation>,
}

impl Product {
    pub fn available(&self) -> u64 {
        self.warehouses.values().map(Stock::available).sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum InventoryCommand {
    AddProduct {
        name: String,
        #[serde(default)]
        low_stock_threshold: u64,
    },
    /// Receives (`delta` > 0) or writes off (`delta` < 0) stock in a warehouse.
    AdjustStock {
        warehouse: String,
        delta: i64,
        #[serde(default)]
        reason: String,
    },
    ReserveStock {
        reservation_id: String,
        warehouse: String,
        quantity: u64,
    },
    ReleaseStock {
        reservation_id: String,
    },
    /// Turns a reservation into a sale: the stock leaves the warehouse.
    RecordSale {
        reservation_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum InventoryEvent {
    ProductAdded {
        name: String,
        low_stock_threshold: u64,
    },
    StockAdjusted {
        warehouse: String,
        delta: i64,
        on_hand: u64,
        reason: String,
    },
    StockReserved {
        reservation_id: String,
        warehouse: String,
        quantity: u64,
    },
    StockReleased {
        reservation_id: String,
        warehouse: String,
        quantity: u64,
    },
    SaleRecorded {
        reservation_id: String,
        warehouse: String,
        quantity: u64,
    },
    LowStock {
        available: u64,
        threshold: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("product already exists")]
    AlreadyExists,
    #[error("unknown product")]
    UnknownProduct,
    #[error("out of stock in {warehouse:?}: {requested} requested, {available} available")]
    OutOfStock {
        warehouse: String,
        requested: u64,
        available: u64,
    },
    #[error(
        "warehouse {warehouse:?} holds {on_hand} ({reserved} reserved): cannot adjust by {delta}"
    )]
    InsufficientOnHand {
        warehouse: String,
        on_hand: u64,
        reserved: u64,
        delta: i64,
    },
    #[error("unknown reservation {0:?}")]
    UnknownReservation(String),
    #[error("reservation {0:?} exists already for another quantity or warehouse")]
    ReservationConflict(String),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl DomainError for InventoryError {
    fn code(&self) -> &'static str {
        match self {
            InventoryError::AlreadyExists => "already_exists",
            InventoryError::UnknownProduct => "unknown_product",
            InventoryError::OutOfStock { .. } => "out_of_stock",
            InventoryError::InsufficientOnHand { .. } => "insufficient_on_hand",
            InventoryError::UnknownReservation(_) => "unknown_reservation",
            InventoryError::ReservationConflict(_) => "reservation_conflict",
            InventoryError::Invalid(_) => "invalid",
        }
    }
}

impl Product {
    /// Appends LowStock to `events` when applying them crosses the threshold downwards.
    fn with_low_stock(&self, mut events: Vec<InventoryEvent>) -> Vec<InventoryEvent> {
        let before = self.available();
        let mut after = self.clone();
        for e in &events {
            after.apply(e);
        }
        let t = self.low_stock_threshold;
        if before >= t && after.available() < t {
            events.push(InventoryEvent::LowStock {
                available: after.available(),
                threshold: t,
            });
        }
        events
    }
}

impl Aggregate for Product {
    const TYPE: &'static str = "sku";
    const COMMANDS: &'static [&'static str] = &[
        "AddProduct",
        "AdjustStock",
        "ReserveStock",
        "ReleaseStock",
        "RecordSale",
    ];
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    fn decide(
        &self,
        command: &InventoryCommand,
        _ctx: &CommandContext<'_>,
    ) -> Result<Vec<InventoryEvent>, InventoryError> {
        use InventoryCommand as C;
        use InventoryEvent as E;
        if !self.exists && !matches!(command, C::AddProduct { .. }) {
            return Err(InventoryError::UnknownProduct);
        }
        let events =
            match command {
                C::AddProduct {
                    name,
                    low_stock_threshold,
                } => {
                    if self.exists {
                        return Err(InventoryError::AlreadyExists);
                    }
                    return Ok(vec![E::ProductAdded {
                        name: name.clone(),
                        low_stock_threshold: *low_stock_threshold,
                    }]);
                }
                C::AdjustStock {
                    warehouse,
                    delta,
                    reason,
                } => {
                    if warehouse.is_empty() {
                        return Err(InventoryError::Invalid("warehouse: empty"));
                    }
                    if *delta == 0 {
                        return Err(InventoryError::Invalid("delta: zero"));
                    }
                    let s = self.warehouses.get(warehouse).copied().unwrap_or_default();
                    let on_hand = if *delta >= 0 {
                        s.on_hand.checked_add(delta.unsigned_abs())
                    } else {
                        s.on_hand
                            .checked_sub(delta.unsigned_abs())
                            .filter(|v| *v >= s.reserved)
                    };
                    let Some(on_hand) = on_hand else {
                        return Err(InventoryError::InsufficientOnHand {
                            warehouse: warehouse.clone(),
                            on_hand: s.on_hand,
                            reserved: s.reserved,
                            delta: *delta,
                        });
                    };
                    vec![E::StockAdjusted {
                        warehouse: warehouse.clone(),
                        delta: *delta,
                        on_hand,
                        reason: reason.clone(),
                    }]
                }
                C::ReserveStock {
                    reservation_id,
                    warehouse,
                    quantity,
                } => {
                    if *quantity == 0 {
                        return Err(InventoryError::Invalid("quantity: zero"));
                    }
                    if let Some(r) = self.reservations.get(reservation_id) {
                        if r.warehouse == *warehouse && r.quantity == *quantity {
                            return Ok(Vec::new());
                        }
                        return Err(InventoryError::ReservationConflict(reservation_id.clone()));
                    }
                    let available = self.warehouses.get(warehouse).map_or(0, Stock::available);
                    if *quantity > available {
                        return Err(InventoryError::OutOfStock {
                            warehouse: warehouse.clone(),
                            requested: *quantity,
                            available,
                        });
                    }
                    vec![E::StockReserved {
                        reservation_id: reservation_id.clone(),
                        warehouse: warehouse.clone(),
                        quantity: *quantity,
                    }]
                }
                C::ReleaseStock { reservation_id } => {
                    let r = self.reservations.get(reservation_id).ok_or_else(|| {
                        InventoryError::UnknownReservation(reservation_id.clone())
                    })?;
                    vec![E::StockReleased {
                        reservation_id: reservation_id.clone(),
                        warehouse: r.warehouse.clone(),
                        quantity: r.quantity,
                    }]
                }
                C::RecordSale { reservation_id } => {
                    let r = self.reservations.get(reservation_id).ok_or_else(|| {
                        InventoryError::UnknownReservation(reservation_id.clone())
                    })?;
                    vec![E::SaleRecorded {
                        reservation_id: reservation_id.clone(),
                        warehouse: r.warehouse.clone(),
                        quantity: r.quantity,
                    }]
                }
            };
        Ok(self.with_low_stock(events))
    }

    fn apply(&mut self, event: &InventoryEvent) {
        use InventoryEvent as E;
        match event {
            E::ProductAdded {
                name,
                low_stock_threshold,
            } => {
                self.exists = true;
                self.name.clone_from(name);
                self.low_stock_threshold = *low_stock_threshold;
            }
            E::StockAdjusted {
                warehouse, on_hand, ..
            } => {
                self.warehouses
                    .entry(warehouse.clone())
                    .or_default()
                    .on_hand = *on_hand;
            }
            E::StockReserved {
                reservation_id,
                warehouse,
                quantity,
            } => {
                let s = self.warehouses.entry(warehouse.clone()).or_default();
                s.reserved = s.reserved.saturating_add(*quantity);
                self.reservations.insert(
                    reservation_id.clone(),
                    Reservation {
                        warehouse: warehouse.clone(),
                        quantity: *quantity,
                    },
                );
            }
            E::StockReleased {
                reservation_id,
                warehouse,
                quantity,
            } => {
                let s = self.warehouses.entry(warehouse.clone()).or_default();
                s.reserved = s.reserved.saturating_sub(*quantity);
                self.reservations.remove(reservation_id);
            }
            E::SaleRecorded {
                reservation_id,
                warehouse,
                quantity,
            } => {
                let s = self.warehouses.entry(warehouse.clone()).or_default();
                s.reserved = s.reserved.saturating_sub(*quantity);
                s.on_hand = s.on_hand.saturating_sub(*quantity);
                self.reservations.remove(reservation_id);
            }
            E::LowStock { .. } => {}
        }
    }

    fn exists(&self) -> bool {
        self.exists
    }
}

/// The `inventory` projection: `sku/<sku>` (per warehouse on hand, reserved, available; total
/// available; low flag) and `low-stock` (SKUs below their threshold).
pub struct InventoryProjection;

#[async_trait]
impl Projection for InventoryProjection {
    fn name(&self) -> &str {
        "inventory"
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::Prefix("sku-".into())
    }

    async fn apply(&self, event: &Event, docs: &mut Docs) -> Result<(), String> {
        let ev: InventoryEvent = serde_json::from_str(&event.detail).map_err(|e| e.to_string())?;
        let sku = super::aggregate_id(event, "sku-");
        let key = format!("sku/{sku}");
        let mut doc = docs
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_else(
                || json!({"sku": sku, "warehouses": {}, "threshold": 0, "low_stock": false}),
            );
        let bump = |doc: &mut serde_json::Value, wh: &str, field: &str, delta: i128| {
            let cur = i128::from(doc["warehouses"][wh][field].as_u64().unwrap_or(0));
            doc["warehouses"][wh][field] = json!(u64::try_from((cur + delta).max(0)).unwrap_or(0));
        };
        let mut low_change: Option<bool> = None;
        match &ev {
            InventoryEvent::ProductAdded {
                name,
                low_stock_threshold,
            } => {
                doc["name"] = json!(name);
                doc["threshold"] = json!(low_stock_threshold);
            }
            InventoryEvent::StockAdjusted {
                warehouse, on_hand, ..
            } => {
                doc["warehouses"][warehouse.as_str()]["on_hand"] = json!(on_hand);
                if doc["warehouses"][warehouse.as_str()]["reserved"].is_null() {
                    doc["warehouses"][warehouse.as_str()]["reserved"] = json!(0);
                }
            }
            InventoryEvent::StockReserved {
                warehouse,
                quantity,
                ..
            } => bump(&mut doc, warehouse, "reserved", i128::from(*quantity)),
            InventoryEvent::StockReleased {
                warehouse,
                quantity,
                ..
            } => bump(&mut doc, warehouse, "reserved", -i128::from(*quantity)),
            InventoryEvent::SaleRecorded {
                warehouse,
                quantity,
                ..
            } => {
                bump(&mut doc, warehouse, "reserved", -i128::from(*quantity));
                bump(&mut doc, warehouse, "on_hand", -i128::from(*quantity));
            }
            InventoryEvent::LowStock { .. } => {
                doc["low_stock"] = json!(true);
                low_change = Some(true);
            }
        }
        let mut total = 0u64;
        if let Some(whs) = doc["warehouses"].as_object_mut() {
            for w in whs.values_mut() {
                let avail = w["on_hand"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(w["reserved"].as_u64().unwrap_or(0));
                w["available"] = json!(avail);
                total += avail;
            }
        }
        doc["available"] = json!(total);
        let threshold = doc["threshold"].as_u64().unwrap_or(0);
        if doc["low_stock"] == json!(true) && total >= threshold && low_change.is_none() {
            doc["low_stock"] = json!(false);
            low_change = Some(false);
        }
        doc["version"] = json!(event.version);
        docs.put(&key, doc).await.map_err(|e| e.to_string())?;
        if let Some(low) = low_change {
            let mut list = docs
                .get("low-stock")
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| json!({"skus": {}}));
            if low {
                list["skus"][sku.as_str()] = json!(total);
            } else if let Some(m) = list["skus"].as_object_mut() {
                m.remove(&sku);
            }
            docs.put("low-stock", list)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
