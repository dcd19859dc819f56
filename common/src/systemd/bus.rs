//! systemd over D-Bus (zbus, blocking API): unit properties and jobs on the system bus.
//!
//! One connection, opened on first use and reused; after an error it is dropped and the next
//! call opens a new one (systemd or the bus daemon may have restarted). Every call is bounded
//! by the connection's method timeout.
//!
//! The system bus, never systemd's private socket (`/run/systemd/private`, where root's
//! systemctl goes): systemd sends its messages there with a well-known name as sender, which
//! zbus 5 refuses (its connection thread panics: found by the system test `tests/dbus.rs`).
//! So dbus must run (the package depends on it); without it every call fails with one line
//! naming the address.
//!
//! A unit's object path is derived from its name the way systemd does
//! (`/org/freedesktop/systemd1/unit/` + the name with every byte outside `[A-Za-z0-9]` written
//! `_xx`); asking for a unit by path loads it, as `systemctl show` does, so an unknown unit
//! reads as `LoadState=not-found`.

use super::{ActiveState, Job, UnitStatus};
use crate::{paths, Failure};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedValue, Value};

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// The default bound of one D-Bus call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);

/// A lazily opened connection to systemd on the system bus.
pub struct Bus {
    address: String,
    timeout: Duration,
    conn: Mutex<Option<Connection>>,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus::with_timeout(DEFAULT_TIMEOUT)
    }
}

type Props = HashMap<String, OwnedValue>;

impl Bus {
    /// The system bus ([`paths::DBUS_SYSTEM_BUS`]), each call bounded by `timeout`.
    pub fn with_timeout(timeout: Duration) -> Bus {
        Bus::at(paths::DBUS_SYSTEM_BUS, timeout)
    }

    /// The bus at a D-Bus address (`unix:path=...`).
    pub fn at(address: &str, timeout: Duration) -> Bus {
        Bus {
            address: address.to_string(),
            timeout,
            conn: Mutex::new(None),
        }
    }

    fn connection(&self) -> Result<Connection, Failure> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = zbus::blocking::connection::Builder::address(self.address.as_str())
            .and_then(|b| b.method_timeout(self.timeout).build())
            .map_err(|e| {
                Failure::unavailable(format!(
                    "cannot reach systemd over D-Bus ({}): {}; is dbus running?",
                    self.address,
                    describe(&e)
                ))
            })?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Run `f` on the connection; on a transport error, forget the connection.
    fn call<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Connection) -> zbus::Result<T>,
    ) -> Result<T, Failure> {
        let c = self.connection()?;
        f(&c).map_err(|e| {
            if !matches!(e, zbus::Error::MethodError(..) | zbus::Error::FDO(_)) {
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Failure::other(format!("{what}: {}", describe(&e)))
        })
    }

    fn get_all(&self, unit: &str, iface: &str) -> Result<Props, Failure> {
        let path = unit_path(unit);
        self.call(&format!("reading {unit} from systemd"), |c| {
            c.call_method(
                Some(DEST),
                path.as_str(),
                Some(PROPERTIES),
                "GetAll",
                &(iface,),
            )?
            .body()
            .deserialize::<Props>()
        })
    }

    /// The state of each unit, in order.
    pub fn units(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        names.iter().map(|n| self.unit(n)).collect()
    }

    /// [`super::Systemd::sweep`]: one `ListUnitsByNames` for every unit's states and job,
    /// then `Properties.Get` of only the Service properties the unit's state makes relevant
    /// (two for a running service, three for a failed one, none for an inactive one), instead
    /// of two `GetAll` (about 300 properties) per unit.
    pub fn sweep(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        if names.is_empty() {
            return Ok(vec![]);
        }
        type Listed = (
            String,
            String,
            String,
            String,
            String,
            String,
            zbus::zvariant::OwnedObjectPath,
            u32,
            String,
            zbus::zvariant::OwnedObjectPath,
        );
        let listed: Vec<Listed> = self.call("listing units from systemd", |c| {
            c.call_method(
                Some(DEST),
                MANAGER_PATH,
                Some(MANAGER),
                "ListUnitsByNames",
                &(names,),
            )?
            .body()
            .deserialize()
        })?;
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            // One entry per name, in order (systemd names an alias by its unit's own name).
            let entry = if listed.len() == names.len() {
                listed.get(i)
            } else {
                listed.iter().find(|l| &l.0 == name)
            };
            let Some(l) = entry else {
                // systemd lists every name it is asked for; one it does not know is not-found.
                out.push(UnitStatus {
                    unit: name.clone(),
                    load_state: "not-found".into(),
                    active_state: ActiveState::Inactive,
                    sub_state: "dead".into(),
                    ..UnitStatus::default()
                });
                continue;
            };
            let mut u = UnitStatus {
                unit: name.clone(),
                load_state: l.2.clone(),
                active_state: ActiveState::parse(&l.3),
                sub_state: l.4.clone(),
                job_pending: l.7 != 0,
                ..UnitStatus::default()
            };
            if name.ends_with(".service") && u.load_state != "not-found" {
                let path = l.6.as_str();
                let failed = u.active_state == ActiveState::Failed;
                let running =
                    !matches!(u.active_state, ActiveState::Inactive | ActiveState::Failed);
                if running || failed {
                    u.n_restarts = self.get_u64(name, path, "NRestarts")? as u32;
                }
                if running {
                    u.main_pid = self.get_u64(name, path, "MainPID")? as u32;
                }
                if failed {
                    u.result = self.get_str(name, path, "Result")?;
                    u.exec_main_status = self.get_i64(name, path, "ExecMainStatus")? as i32;
                }
            }
            out.push(u);
        }
        Ok(out)
    }

    /// One property of a service.
    fn get(&self, unit: &str, path: &str, prop: &str) -> Result<OwnedValue, Failure> {
        self.call(&format!("reading {unit} {prop} from systemd"), |c| {
            c.call_method(Some(DEST), path, Some(PROPERTIES), "Get", &(SERVICE, prop))?
                .body()
                .deserialize::<OwnedValue>()
        })
    }

    fn get_u64(&self, unit: &str, path: &str, prop: &str) -> Result<u64, Failure> {
        Ok(as_u64(Some(&self.get(unit, path, prop)?)))
    }

    fn get_i64(&self, unit: &str, path: &str, prop: &str) -> Result<i64, Failure> {
        Ok(as_i64(Some(&self.get(unit, path, prop)?)))
    }

    fn get_str(&self, unit: &str, path: &str, prop: &str) -> Result<String, Failure> {
        Ok(as_str(Some(&self.get(unit, path, prop)?)).to_string())
    }

    fn unit(&self, name: &str) -> Result<UnitStatus, Failure> {
        let u = self.get_all(name, UNIT)?;
        // Only services have the Service interface (and a not-found unit may lack it).
        let s = if name.ends_with(".service") && str_of(&u, "LoadState") != "not-found" {
            self.get_all(name, SERVICE)?
        } else {
            Props::new()
        };
        Ok(status_from(name, &u, &s))
    }

    /// Queue `job` for `unit` (mode `replace`) and return once systemd has queued it.
    pub fn queue(&self, job: Job, unit: &str) -> Result<(), Failure> {
        let method = match job {
            Job::Start => "StartUnit",
            Job::Stop => "StopUnit",
            Job::Restart => "RestartUnit",
            Job::Reload => "ReloadUnit",
        };
        self.call(&format!("cannot {} {unit}", job.as_str()), |c| {
            c.call_method(
                Some(DEST),
                MANAGER_PATH,
                Some(MANAGER),
                method,
                &(unit, "replace"),
            )
            .map(|_| ())
        })
    }
}

impl Bus {
    /// `KillUnit(unit, "main", signal)`: signal the unit's main process only.
    pub fn signal_main(&self, unit: &str, signal: super::Signal) -> Result<(), Failure> {
        self.call(&format!("cannot send {signal} to {unit}"), |c| {
            c.call_method(
                Some(DEST),
                MANAGER_PATH,
                Some(MANAGER),
                "KillUnit",
                &(unit, "main", signal as i32),
            )
            .map(|_| ())
        })
    }
}

/// One line for an error: systemd's own message for a refused call.
fn describe(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{msg} ({})", name.as_str()),
        zbus::Error::MethodError(name, None, _) => name.as_str().to_string(),
        other => other.to_string(),
    }
}

/// The D-Bus object path of a unit: systemd's escaping of the name.
pub fn unit_path(unit: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    if unit.is_empty() {
        p.push('_');
    }
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

fn str_of<'a>(p: &'a Props, k: &str) -> &'a str {
    as_str(p.get(k))
}

fn u64_of(p: &Props, k: &str) -> u64 {
    as_u64(p.get(k))
}

fn i64_of(p: &Props, k: &str) -> i64 {
    as_i64(p.get(k))
}

/// A property value as a string ("" when absent or of another type).
fn as_str(v: Option<&OwnedValue>) -> &str {
    match v.map(|v| &**v) {
        Some(Value::Str(s)) => s.as_str(),
        _ => "",
    }
}

/// A property value as an unsigned number (0 when absent or of another type).
fn as_u64(v: Option<&OwnedValue>) -> u64 {
    match v.map(|v| &**v) {
        Some(Value::U64(n)) => *n,
        Some(Value::U32(n)) => (*n).into(),
        _ => 0,
    }
}

/// A property value as a signed number (0 when absent or of another type).
fn as_i64(v: Option<&OwnedValue>) -> i64 {
    match v.map(|v| &**v) {
        Some(Value::I32(n)) => (*n).into(),
        Some(Value::I64(n)) => *n,
        _ => 0,
    }
}

/// A [`UnitStatus`] from the properties of the Unit and Service interfaces.
fn status_from(name: &str, u: &Props, s: &Props) -> UnitStatus {
    // Job: (job id, job path); id 0 when no job is queued.
    let job_pending = match u.get("Job").map(|v| &**v) {
        Some(Value::Structure(st)) => {
            matches!(st.fields().first(), Some(Value::U32(id)) if *id != 0)
        }
        _ => false,
    };
    UnitStatus {
        unit: name.to_string(),
        load_state: str_of(u, "LoadState").to_string(),
        active_state: ActiveState::parse(str_of(u, "ActiveState")),
        sub_state: str_of(u, "SubState").to_string(),
        main_pid: u64_of(s, "MainPID") as u32,
        n_restarts: u64_of(s, "NRestarts") as u32,
        result: str_of(s, "Result").to_string(),
        exec_main_status: i64_of(s, "ExecMainStatus") as i32,
        active_enter_monotonic_usec: u64_of(u, "ActiveEnterTimestampMonotonic"),
        status_text: str_of(s, "StatusText").to_string(),
        unit_file_state: str_of(u, "UnitFileState").to_string(),
        job_pending,
        control_group: str_of(s, "ControlGroup").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_escaped_like_systemd() {
        assert_eq!(
            unit_path("citadel-model@phi3.service"),
            "/org/freedesktop/systemd1/unit/citadel_2dmodel_40phi3_2eservice"
        );
        assert_eq!(
            unit_path("dbus.service"),
            "/org/freedesktop/systemd1/unit/dbus_2eservice"
        );
        assert_eq!(unit_path("0a"), "/org/freedesktop/systemd1/unit/_30a");
    }

    #[test]
    fn properties_become_a_status() {
        let ov = |v: Value<'static>| OwnedValue::try_from(v).unwrap();
        let mut u = Props::new();
        u.insert("LoadState".into(), ov(Value::from("loaded")));
        u.insert("ActiveState".into(), ov(Value::from("activating")));
        u.insert("SubState".into(), ov(Value::from("start")));
        u.insert("ActiveEnterTimestampMonotonic".into(), ov(Value::U64(7)));
        let job = zbus::zvariant::StructureBuilder::new()
            .add_field(12u32)
            .add_field(
                zbus::zvariant::ObjectPath::try_from("/org/freedesktop/systemd1/job/12").unwrap(),
            )
            .build()
            .unwrap();
        u.insert("Job".into(), ov(Value::Structure(job)));
        let mut s = Props::new();
        s.insert("MainPID".into(), ov(Value::U32(42)));
        s.insert("NRestarts".into(), ov(Value::U32(2)));
        s.insert("ExecMainStatus".into(), ov(Value::I32(78)));
        s.insert(
            "ControlGroup".into(),
            ov(Value::from("/system.slice/a.service")),
        );
        let st = status_from("a.service", &u, &s);
        assert_eq!(st.active_state, ActiveState::Activating);
        assert_eq!(st.main_pid, 42);
        assert_eq!(st.n_restarts, 2);
        assert_eq!(st.exec_main_status, 78);
        assert_eq!(st.active_enter_monotonic_usec, 7);
        assert!(st.job_pending);
        assert_eq!(st.control_group, "/system.slice/a.service");
        assert!(!status_from("a.service", &Props::new(), &Props::new()).job_pending);
    }

    #[test]
    fn no_bus_is_unavailable_and_names_the_address() {
        let d = tempfile::tempdir().unwrap();
        let addr = format!("unix:path={}/no-bus", d.path().display());
        let bus = Bus::at(&addr, Duration::from_secs(1));
        let e = bus.units(&["a.service".into()]).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::Unavailable);
        assert!(e.message.contains(&addr), "{e}");
        let e = bus.queue(Job::Restart, "a.service").unwrap_err();
        assert!(e.message.contains(&addr), "{e}");
    }
}
