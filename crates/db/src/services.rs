//! Repository methods for services: brokers and their catalogs (kept in step with what
//! the gateways announce), service instances and app bindings.

use crate::{
    conflict_or, Db, Filter, Result, Service, ServiceBinding, ServiceBroker, ServiceInstance,
    ServicePlan,
};
use strato_core::{new_guid, now_rfc3339};

/// A catalog entry as a broker describes it, before it has a guid here.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    pub label: String,
    pub unique_id: String,
    pub description: String,
    pub bindable: bool,
    pub tags: Vec<String>,
    /// (name, unique_id, description, free)
    pub plans: Vec<(String, String, String, bool)>,
}

impl Db {
    /// Creates or updates the broker called `name`.
    pub async fn upsert_broker(
        &self,
        name: &str,
        url: &str,
        username: &str,
        password: &str,
    ) -> Result<ServiceBroker> {
        let now = now_rfc3339();
        let existing: Option<ServiceBroker> = self
            .select_where(
                "service_brokers",
                "name",
                &[("name", &Some(name.to_string()))],
            )
            .await?
            .into_iter()
            .next();
        match existing {
            Some(mut b) => {
                if b.url != url || b.username != username || b.password != password {
                    sqlx::query("UPDATE service_brokers SET url = $1, username = $2, password = $3, updated_at = $4 WHERE guid = $5")
                        .bind(url).bind(username).bind(password).bind(&now).bind(&b.guid)
                        .execute(self.pool()).await?;
                    b.url = url.to_string();
                    b.username = username.to_string();
                    b.password = password.to_string();
                    b.updated_at = now;
                }
                Ok(b)
            }
            None => {
                let b = ServiceBroker {
                    guid: new_guid(),
                    name: name.to_string(),
                    url: url.to_string(),
                    username: username.to_string(),
                    password: password.to_string(),
                    created_at: now.clone(),
                    updated_at: now,
                };
                sqlx::query("INSERT INTO service_brokers (guid, name, url, username, password, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7)")
                    .bind(&b.guid).bind(&b.name).bind(&b.url).bind(&b.username).bind(&b.password).bind(&b.created_at).bind(&b.updated_at)
                    .execute(self.pool()).await
                    .map_err(|e| conflict_or(e, || format!("service broker '{name}'")))?;
                Ok(b)
            }
        }
    }

    pub async fn broker_by_guid(&self, guid: &str) -> Result<Option<ServiceBroker>> {
        self.by_guid("service_brokers", guid).await
    }

    /// Makes the broker's catalog the services and plans of record, in one transaction:
    /// new entries are added, changed ones updated; plans the broker no longer offers are
    /// marked inactive (instances may still use them).
    pub async fn sync_catalog(&self, broker_guid: &str, entries: &[CatalogEntry]) -> Result<()> {
        let now = now_rfc3339();
        let mut tx = self.pool().begin().await?;
        for e in entries {
            let tags = serde_json::to_string(&e.tags).unwrap_or_else(|_| "[]".into());
            let existing: Option<Service> =
                sqlx::query_as("SELECT * FROM services WHERE label = $1")
                    .bind(&e.label)
                    .fetch_optional(&mut *tx)
                    .await?;
            let service_guid = match existing {
                Some(s) => {
                    sqlx::query("UPDATE services SET unique_id = $1, description = $2, bindable = $3, tags = $4, active = 1, service_broker_guid = $5, updated_at = $6 WHERE guid = $7")
                        .bind(&e.unique_id).bind(&e.description).bind(e.bindable as i64).bind(&tags).bind(broker_guid).bind(&now).bind(&s.guid)
                        .execute(&mut *tx).await?;
                    s.guid
                }
                None => {
                    let guid = new_guid();
                    sqlx::query("INSERT INTO services (guid, label, unique_id, description, bindable, tags, active, service_broker_guid, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,1,$7,$8,$9)")
                        .bind(&guid).bind(&e.label).bind(&e.unique_id).bind(&e.description).bind(e.bindable as i64).bind(&tags).bind(broker_guid).bind(&now).bind(&now)
                        .execute(&mut *tx).await?;
                    guid
                }
            };
            sqlx::query("UPDATE service_plans SET active = 0 WHERE service_guid = $1")
                .bind(&service_guid)
                .execute(&mut *tx)
                .await?;
            for (name, unique_id, description, free) in &e.plans {
                let existing: Option<ServicePlan> = sqlx::query_as(
                    "SELECT * FROM service_plans WHERE service_guid = $1 AND name = $2",
                )
                .bind(&service_guid)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
                match existing {
                    Some(p) => {
                        sqlx::query("UPDATE service_plans SET unique_id = $1, description = $2, free = $3, active = 1, updated_at = $4 WHERE guid = $5")
                            .bind(unique_id).bind(description).bind(*free as i64).bind(&now).bind(&p.guid)
                            .execute(&mut *tx).await?;
                    }
                    None => {
                        sqlx::query("INSERT INTO service_plans (guid, name, unique_id, description, free, active, service_guid, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,1,$6,$7,$8)")
                            .bind(new_guid()).bind(name).bind(unique_id).bind(description).bind(*free as i64).bind(&service_guid).bind(&now).bind(&now)
                            .execute(&mut *tx).await?;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Services, filtered by `label`.
    pub async fn list_services(&self, f: &Filter) -> Result<Vec<Service>> {
        self.select_where("services", "label", &[("label", &f.label)])
            .await
    }

    pub async fn service_by_guid(&self, guid: &str) -> Result<Option<Service>> {
        self.by_guid("services", guid).await
    }

    /// Plans, filtered by `service_guid` and `name`.
    pub async fn list_service_plans(&self, f: &Filter) -> Result<Vec<ServicePlan>> {
        self.select_where(
            "service_plans",
            "service_guid, name",
            &[("service_guid", &f.service_guid), ("name", &f.name)],
        )
        .await
    }

    pub async fn service_plan_by_guid(&self, guid: &str) -> Result<Option<ServicePlan>> {
        self.by_guid("service_plans", guid).await
    }

    // ---- instances ----

    /// Records a new instance; a name taken in the space is a `Conflict`.
    pub async fn insert_service_instance(&self, si: &ServiceInstance) -> Result<()> {
        sqlx::query("INSERT INTO service_instances (guid, name, space_guid, service_plan_guid, credentials, syslog_drain_url, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)")
            .bind(&si.guid).bind(&si.name).bind(&si.space_guid).bind(&si.service_plan_guid).bind(&si.credentials).bind(&si.syslog_drain_url).bind(&si.created_at).bind(&si.updated_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("service instance '{}'", si.name)))?;
        Ok(())
    }

    /// A fresh instance row (not yet stored).
    pub fn new_service_instance(
        name: &str,
        space_guid: &str,
        plan_guid: Option<&str>,
        credentials: &str,
    ) -> ServiceInstance {
        let now = now_rfc3339();
        ServiceInstance {
            guid: new_guid(),
            name: name.to_string(),
            space_guid: space_guid.to_string(),
            service_plan_guid: plan_guid.map(str::to_string),
            credentials: credentials.to_string(),
            syslog_drain_url: None,
            created_at: now.clone(),
            updated_at: now,
        }
    }

    /// Instances, filtered by `space_guid` and `name`.
    pub async fn list_service_instances(&self, f: &Filter) -> Result<Vec<ServiceInstance>> {
        self.select_where(
            "service_instances",
            "created_at, name",
            &[("space_guid", &f.space_guid), ("name", &f.name)],
        )
        .await
    }

    pub async fn service_instance_by_guid(&self, guid: &str) -> Result<Option<ServiceInstance>> {
        self.by_guid("service_instances", guid).await
    }

    /// Renames and/or replaces the credentials of an instance.
    pub async fn update_service_instance(&self, si: &ServiceInstance) -> Result<()> {
        sqlx::query("UPDATE service_instances SET name = $1, credentials = $2, syslog_drain_url = $3, updated_at = $4 WHERE guid = $5")
            .bind(&si.name).bind(&si.credentials).bind(&si.syslog_drain_url).bind(now_rfc3339()).bind(&si.guid)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("service instance '{}'", si.name)))?;
        Ok(())
    }

    pub async fn delete_service_instance(&self, guid: &str) -> Result<bool> {
        self.delete_by(&[], ("service_instances", "guid"), guid)
            .await
    }

    // ---- bindings ----

    pub async fn insert_service_binding(
        &self,
        app_guid: &str,
        instance_guid: &str,
        binding_guid: &str,
        credentials: &str,
    ) -> Result<ServiceBinding> {
        let now = now_rfc3339();
        let b = ServiceBinding {
            guid: binding_guid.to_string(),
            app_guid: app_guid.to_string(),
            service_instance_guid: instance_guid.to_string(),
            credentials: credentials.to_string(),
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO service_bindings (guid, app_guid, service_instance_guid, credentials, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(&b.guid).bind(&b.app_guid).bind(&b.service_instance_guid).bind(&b.credentials).bind(&b.created_at).bind(&b.updated_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || "this binding".to_string()))?;
        Ok(b)
    }

    /// Bindings, filtered by `app_guid` and `service_instance_guid`.
    pub async fn list_service_bindings(&self, f: &Filter) -> Result<Vec<ServiceBinding>> {
        self.select_where(
            "service_bindings",
            "created_at",
            &[
                ("app_guid", &f.app_guid),
                ("service_instance_guid", &f.service_instance_guid),
            ],
        )
        .await
    }

    pub async fn service_binding_by_guid(&self, guid: &str) -> Result<Option<ServiceBinding>> {
        self.by_guid("service_bindings", guid).await
    }

    pub async fn delete_service_binding(&self, guid: &str) -> Result<bool> {
        self.delete_by(&[], ("service_bindings", "guid"), guid)
            .await
    }
}
