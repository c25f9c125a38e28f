//! Node and coordinator configurations for the generated organisations: each
//! node publishes common-model tables (`pid`, birth year, sex, area,
//! deprivation decile and service attributes) mapped from its local schema.

use std::collections::BTreeMap;
use std::path::PathBuf;

use carrow_linkage::IdentifierKind;
use carrow_node::config::{
    ClientConfig, ClientRole, ColumnConfig, ColumnType, Freshness, IdentifierColumnsConfig,
    LocalColumns, NodeConfig, OptOutKind, OptOutRule, ProjectPurpose, SourceConfig, TableConfig,
};

/// The project the generated nodes and coordinator use.
pub const DEMO_PROJECT: &str = "demo";

/// Default Flight SQL port of each generated node; the coordinator's is 50050.
pub fn default_port(org: &str) -> u16 {
    match org {
        "acute" => 50051,
        "gp" => 50052,
        _ => 50053,
    }
}

/// Token hashes of the callers a node accepts.
pub struct NodeCredentials {
    pub coordinator_sha256: String,
    pub operator_sha256: String,
}

fn col(name: &str, from: &str, data_type: Option<ColumnType>) -> ColumnConfig {
    ColumnConfig {
        name: name.into(),
        from: Some(from.into()),
        expr: None,
        data_type,
    }
}

fn expr(name: &str, sql: &str, data_type: Option<ColumnType>) -> ColumnConfig {
    ColumnConfig {
        name: name.into(),
        from: None,
        expr: Some(sql.into()),
        data_type,
    }
}

fn identifiers(
    nhs: &str,
    family: &str,
    given: &str,
    dob: &str,
    sex: &str,
    postcode: &str,
    address: &str,
) -> IdentifierColumnsConfig {
    IdentifierColumnsConfig(
        [
            (IdentifierKind::NhsNumber, nhs),
            (IdentifierKind::FamilyName, family),
            (IdentifierKind::GivenName, given),
            (IdentifierKind::DateOfBirth, dob),
            (IdentifierKind::Sex, sex),
            (IdentifierKind::Postcode, postcode),
            (IdentifierKind::Address, address),
        ]
        .into_iter()
        .map(|(kind, column)| (kind, LocalColumns::One(column.into())))
        .collect(),
    )
}

/// A project for direct care, exempt from the national data opt-out (and
/// from type 1 dissent): the demo shows the exemption in the audit log.
pub const DIRECT_CARE_PROJECT: &str = "direct_care";

/// The basis recorded for the direct-care project's exemption.
pub const DIRECT_CARE_BASIS: &str = "direct care: the national data opt-out does not apply";

/// The purposes of the generated projects: all but direct care are
/// research and planning.
pub fn direct_care_purposes() -> BTreeMap<String, ProjectPurpose> {
    BTreeMap::from([(
        DIRECT_CARE_PROJECT.to_string(),
        ProjectPurpose {
            opt_out_exempt: Some(DIRECT_CARE_BASIS.into()),
            direct_care: true,
        },
    )])
}

/// A node with the generated clients and defaults, publishing nothing yet.
pub(crate) fn base(org: &str, creds: &NodeCredentials) -> NodeConfig {
    NodeConfig {
        name: org.into(),
        listen: format!("127.0.0.1:{}", default_port(org)),
        linkage_secret_file: PathBuf::from("../secrets/linkage.key"),
        audit_log: PathBuf::from("audit.jsonl"),
        audit_key: None,
        ops_listen: None,
        projects: vec![DEMO_PROJECT.into(), DIRECT_CARE_PROJECT.into()],
        default_project: DEMO_PROJECT.into(),
        purposes: direct_care_purposes(),
        clients: vec![
            ClientConfig {
                name: "coordinator".into(),
                role: ClientRole::Coordinator,
                token_sha256: creds.coordinator_sha256.clone(),
                projects: vec![],
            },
            ClientConfig {
                name: "operator".into(),
                role: ClientRole::Operator,
                token_sha256: creds.operator_sha256.clone(),
                projects: vec![],
            },
        ],
        tls: None,
        opt_out_list: None,
        sources: BTreeMap::new(),
        tables: vec![],
        token_table_max_age_secs: 300,
        query_memory_mb: 1_024,
        query_time_limit_secs: 300,
    }
}

/// A comma-separated file read as text (columns are cast when published).
pub(crate) fn csv(path: &str) -> SourceConfig {
    SourceConfig::Csv {
        path: path.into(),
        delimiter: ',',
        infer_types: false,
    }
}

fn freshness_column(column: &str) -> Option<Freshness> {
    Some(Freshness {
        column: Some(column.into()),
        ..Default::default()
    })
}

fn freshness_file() -> Option<Freshness> {
    Some(Freshness {
        file_time: true,
        ..Default::default()
    })
}

/// Published name of the table every organisation offers: one row per
/// contact with its service, in a shared shape, so the coordinator offers it
/// as `combined.contacts`.
pub const CONTACTS: &str = "contacts";

/// The shared contacts table over a node's local `sql`: `person` columns,
/// then the contact's date, the setting and what the contact was.
fn contacts(
    sql: &str,
    identifiers: IdentifierColumnsConfig,
    person: Vec<ColumnConfig>,
    date_from: &str,
    setting: &str,
    activity: ColumnConfig,
    opt_out: Vec<OptOutRule>,
) -> TableConfig {
    let mut columns = person;
    columns.push(col("contact_date", date_from, Some(ColumnType::Date)));
    columns.push(expr(
        "setting",
        &format!("'{setting}'"),
        Some(ColumnType::String),
    ));
    columns.push(activity);
    TableConfig {
        name: CONTACTS.into(),
        description: format!(
            "Contacts with {setting} services, one row per contact (shared shape)"
        ),
        personal: true,
        source: None,
        sql: Some(sql.into()),
        identifiers,
        columns,
        opt_out,
        freshness: freshness_column("contact_date"),
    }
}

/// The hospital trust's node: Parquet extracts of its patient administration system.
pub fn acute(creds: &NodeCredentials) -> NodeConfig {
    let mut cfg = base("acute", creds);
    cfg.sources.insert(
        "pas_patients".into(),
        SourceConfig::Parquet {
            path: "pas_patients.parquet".into(),
        },
    );
    cfg.sources.insert(
        "apc_spells".into(),
        SourceConfig::Parquet {
            path: "apc_spells.parquet".into(),
        },
    );
    cfg.tables.push(TableConfig {
        name: "admissions".into(),
        description: "Admitted patient care spells, one row per spell".into(),
        personal: true,
        source: None,
        sql: Some(
            "SELECT s.*, p.\"NHS_NO\", p.\"SURNAME\", p.\"FORENAME\", p.\"DOB\", p.\"GENDER\", p.\"POSTCODE\", p.\"ADDRESS_LINE_1\", \
             p.\"LSOA\", p.\"IMD_DECILE\", p.\"DATA_OPT_OUT\" FROM apc_spells s JOIN pas_patients p ON s.\"PATIENT_ID\" = p.\"PATIENT_ID\""
                .into(),
        ),
        identifiers: identifiers(
            "NHS_NO",
            "SURNAME",
            "FORENAME",
            "DOB",
            "GENDER",
            "POSTCODE",
            "ADDRESS_LINE_1",
        ),
        columns: vec![
            expr("birth_year", "TRY_CAST(date_part('year', \"DOB\") AS INT)", None),
            expr("sex", "CASE \"GENDER\" WHEN '1' THEN 'M' WHEN '2' THEN 'F' END", None),
            col("area_code", "LSOA", Some(ColumnType::String)),
            col("deprivation_decile", "IMD_DECILE", Some(ColumnType::Int64)),
            col("admission_date", "ADMISSION_DATE", Some(ColumnType::Date)),
            col("discharge_date", "DISCHARGE_DATE", Some(ColumnType::Date)),
            expr(
                "admission_method",
                "CASE \"ADMISSION_METHOD\" WHEN '21' THEN 'emergency' WHEN '11' THEN 'elective' END",
                None,
            ),
            col("primary_diagnosis", "PRIMARY_DIAGNOSIS", Some(ColumnType::String)),
        ],
        // The trust holds no objections: the national data opt-out is
        // recorded at the GP practice and reaches here through the
        // coordinator.
        opt_out: vec![],
        freshness: freshness_column("admission_date"),
    });
    let admissions = cfg.tables[0].clone();
    cfg.tables.push(contacts(
        admissions.sql.as_deref().unwrap_or_default(),
        admissions.identifiers.clone(),
        admissions.columns[..4].to_vec(),
        "ADMISSION_DATE",
        "hospital",
        ColumnConfig {
            name: "activity".into(),
            ..admissions.columns[6].clone()
        },
        admissions.opt_out.clone(),
    ));
    cfg
}

/// GP practices' node: CSV extracts of the clinical system.
pub fn gp(creds: &NodeCredentials) -> NodeConfig {
    let mut cfg = base("gp", creds);
    cfg.sources.insert("patients".into(), csv("patients.csv"));
    cfg.sources.insert(
        "long_term_conditions".into(),
        csv("long_term_conditions.csv"),
    );
    let ids = identifiers(
        "nhs_number",
        "surname",
        "forenames",
        "date_of_birth",
        "sex",
        "postcode",
        "address_line_1",
    );
    let person_columns = || {
        vec![
            expr(
                "birth_year",
                "TRY_CAST(substr(date_of_birth, 7, 4) AS INT)",
                None,
            ),
            expr(
                "sex",
                "CASE upper(sex) WHEN 'M' THEN 'M' WHEN 'F' THEN 'F' END",
                None,
            ),
            col("area_code", "lsoa_code", Some(ColumnType::String)),
            col("deprivation_decile", "imd_decile", Some(ColumnType::Int64)),
        ]
    };
    // The practice holds both registers: the national data opt-out (which
    // the coordinator propagates to every organisation) and type 1
    // dissent (GP data leaves for direct care only).
    let opt_out = vec![
        OptOutRule {
            column: "ndo_status".into(),
            values: vec!["opted_out".into()],
            kind: OptOutKind::National,
        },
        OptOutRule {
            column: "type1_status".into(),
            values: vec!["dissent".into()],
            kind: OptOutKind::Type1,
        },
    ];
    let mut registrations = person_columns();
    registrations.push(col(
        "practice_code",
        "practice_code",
        Some(ColumnType::String),
    ));
    registrations.push(col(
        "registration_date",
        "registration_date",
        Some(ColumnType::Date),
    ));
    cfg.tables.push(TableConfig {
        name: "registrations".into(),
        description: "Patients registered with the area's practices, one row per person".into(),
        personal: true,
        source: Some("patients".into()),
        sql: None,
        identifiers: ids.clone(),
        columns: registrations,
        opt_out: opt_out.clone(),
        freshness: freshness_file(),
    });
    let mut conditions = person_columns();
    conditions.push(col("condition", "condition", Some(ColumnType::String)));
    conditions.push(col("snomed_code", "snomed_code", Some(ColumnType::String)));
    conditions.push(col("diagnosed_on", "diagnosed_on", Some(ColumnType::Date)));
    cfg.tables.push(TableConfig {
        name: "conditions".into(),
        description: "Long-term conditions on the practice register, one row per person and condition".into(),
        personal: true,
        source: None,
        sql: Some(
            "SELECT c.condition, c.snomed_code, c.diagnosed_on, p.* FROM long_term_conditions c \
             JOIN patients p ON c.patient_guid = p.patient_guid"
                .into(),
        ),
        identifiers: ids.clone(),
        columns: conditions,
        opt_out: opt_out.clone(),
        freshness: freshness_column("diagnosed_on"),
    });
    let conditions_sql = cfg.tables[1].sql.clone().unwrap_or_default();
    cfg.tables.push(contacts(
        &conditions_sql,
        ids,
        person_columns(),
        "diagnosed_on",
        "primary care",
        col("activity", "condition", Some(ColumnType::String)),
        opt_out,
    ));
    cfg
}

/// The council's adult social care node: CSV extracts of its case management system.
pub fn council(creds: &NodeCredentials, as_of: &str) -> NodeConfig {
    let mut cfg = base("council", creds);
    cfg.sources.insert("clients".into(), csv("clients.csv"));
    cfg.sources
        .insert("care_packages".into(), csv("care_packages.csv"));
    cfg.sources.insert("areas".into(), csv("areas.csv"));
    let ids = identifiers(
        "NHSNumber",
        "LastName",
        "FirstName",
        "DateOfBirth",
        "Gender",
        "Postcode",
        "AddressLine1",
    );
    let person_columns = || {
        vec![
            expr(
                "birth_year",
                "TRY_CAST(CASE WHEN \"DateOfBirth\" LIKE '____-%' THEN substr(\"DateOfBirth\", 1, 4) \
                 ELSE right(\"DateOfBirth\", 4) END AS INT)",
                None,
            ),
            expr(
                "sex",
                "CASE \"Gender\" WHEN 'Male' THEN 'M' WHEN 'Female' THEN 'F' END",
                None,
            ),
            col("area_code", "AreaCode", Some(ColumnType::String)),
            col(
                "deprivation_decile",
                "DeprivationDecile",
                Some(ColumnType::Int64),
            ),
        ]
    };
    // The council holds no objections of its own (see the GP's).
    let opt_out: Vec<OptOutRule> = vec![];
    cfg.tables.push(TableConfig {
        name: "clients".into(),
        description: "Adult social care clients, one row per person".into(),
        personal: true,
        source: Some("clients".into()),
        sql: None,
        identifiers: ids.clone(),
        columns: person_columns(),
        opt_out: opt_out.clone(),
        freshness: freshness_file(),
    });
    let mut packages = person_columns();
    packages.extend([
        col("service_type", "ServiceType", Some(ColumnType::String)),
        col("start_date", "StartDate", Some(ColumnType::Date)),
        col("end_date", "EndDate", Some(ColumnType::Date)),
        col("weekly_cost", "WeeklyCost", Some(ColumnType::Float64)),
    ]);
    cfg.tables.push(TableConfig {
        name: "care_packages".into(),
        description: "Care packages (home care, residential, reablement ...), one row per package"
            .into(),
        personal: true,
        source: None,
        sql: Some(
            "SELECT k.\"ServiceType\", k.\"StartDate\", k.\"EndDate\", k.\"WeeklyCost\", c.* \
             FROM care_packages k JOIN clients c ON k.\"ClientID\" = c.\"ClientID\""
                .into(),
        ),
        identifiers: ids.clone(),
        columns: packages,
        opt_out: opt_out.clone(),
        freshness: freshness_column("start_date"),
    });
    let packages_sql = cfg.tables[1].sql.clone().unwrap_or_default();
    cfg.tables.push(contacts(
        &packages_sql,
        ids,
        person_columns(),
        "StartDate",
        "social care",
        col("activity", "ServiceType", Some(ColumnType::String)),
        opt_out,
    ));
    cfg.tables.push(TableConfig {
        name: "areas".into(),
        description: "Reference data: small areas with their deprivation decile and population"
            .into(),
        personal: false,
        source: Some("areas".into()),
        sql: None,
        identifiers: IdentifierColumnsConfig::default(),
        columns: vec![
            col("area_code", "area_code", Some(ColumnType::String)),
            col("area_name", "area_name", Some(ColumnType::String)),
            col(
                "deprivation_decile",
                "deprivation_decile",
                Some(ColumnType::Int64),
            ),
            col("population", "population", Some(ColumnType::Int64)),
        ],
        opt_out: vec![],
        freshness: Some(Freshness {
            as_of: Some(as_of.into()),
            ..Default::default()
        }),
    });
    cfg
}
