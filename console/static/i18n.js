// Every label of the console, in zh-CN and en. Keys are English-ish ids; t(key) falls back to the key.
export const MESSAGES = {
  "zh-CN": {
    brand: "瞭望 · 5G 安全态势感知", overview: "态势总览", alerts: "告警", hunt: "狩猎", fiveg: "5G 会话", assets: "资产",
    rules: "规则", sensors: "探针", audit: "审计", logout: "退出", login: "登录", username: "用户名", password: "密码",
    login_failed: "用户名或密码错误", range: "时间范围", all: "全部数据", custom: "自定义", apply: "应用",
    last_15m: "最近 15 分钟", last_1h: "最近 1 小时", last_6h: "最近 6 小时", last_24h: "最近 24 小时", last_7d: "最近 7 天", last_30d: "最近 30 天",
    warning_level: "当前预警等级", level_red: "红色预警", level_orange: "橙色预警", level_yellow: "黄色预警", level_blue: "蓝色预警", level_normal: "正常",
    why: "原因", open_alerts: "未处置告警", posture: "安全态势评分", posture_trend: "态势评分趋势", traffic: "流量趋势", alerts_by_level: "告警趋势（按等级）",
    planes: "5G 平面与协议构成", applications: "应用协议（字节）", top_targets: "受攻击最多的资产", top_sources: "主要攻击来源", attack_graph: "攻击关系图",
    recent_critical: "最新严重告警", flows: "流", bytes: "字节", packets: "包", alerts_n: "告警数", live: "实时", time: "时间", level: "等级",
    signature: "告警名称", category: "类别", detector: "检测器", technique: "ATT&CK/FiGHT 技术", ip: "IP/网段", subscriber: "用户（假名）", status: "状态",
    text: "全文", search: "搜索", group_by: "分组", none: "不分组", source: "源", target: "目的", score: "评分", assignee: "负责人", count: "数量",
    status_new: "新告警", status_acknowledged: "已确认", status_investigating: "调查中", status_resolved: "已解决", status_false_positive: "误报",
    triage: "处置", selected: "已选", comment: "备注", set_status: "设置状态", assign_to: "指派给", no_change: "不变", done: "已更新",
    alert_detail: "告警详情", why_fired: "触发原因", evidence: "证据", score_explained: "评分说明", flow: "流", session: "5G 会话上下文", related: "相关告警",
    comments: "备注记录", audit_trail: "审计记录", download_pcap: "下载报文 (pcap)", no_flow: "该告警是多条流的聚合，无单一流", back: "返回",
    hunt_hint: "例: ip=10.45.0.0/16 dst_port=443 sni~example plane=N3 bytes>100000", results: "结果", pivot: "点击值以添加条件",
    sessions: "会话", inventory: "网元清单", topology: "网元拓扑", role: "角色", state: "状态", dnn: "DNN", snssai: "S-NSSAI", gnb: "gNB", upf: "UPF",
    ue_ip: "UE 地址", teids: "TEID（上/下行）", traffic_n: "流量", first_seen: "首次出现", last_seen: "最近出现", services: "服务", exposures: "暴露面",
    risk: "风险", roles: "网元角色", peers: "对端数", sent: "发送", received: "接收", enabled: "启用", threshold: "阈值", window: "窗口(秒)", view_yaml: "查看 YAML",
    save: "保存", admin_only: "仅管理员可修改", sensor: "探针", pps: "包/秒", decode_errors: "解码错误", drops: "丢包", lag: "延迟", last_seen_ago: "最近上报",
    batches: "批次", user: "用户", action: "操作", detail: "详情", client: "客户端", page: "页", of: "共", prev: "上一页", next: "下一页",
    forbidden: "无权限", error: "错误", loading: "加载中…", nothing: "无数据", timezone: "时区", language: "English",
    rule: "规则", group: "分组键", rule_status: "规则状态", capture_source: "数据来源",
    plane: "平面", port: "端口", proto: "协议", app: "应用", server_name: "SNI/域名", duration: "时长(ms)", total: "合计",
    reidentify: "依法调查：用户身份重识别", reidentify_hint: "输入案件或令状编号、假名化密钥及案件所涉身份（IMSI/SUPI、MSISDN/GPSI、IMEI），得到对应假名及其出现位置。密钥仅用于本次请求，不保存；审计仅记录案件编号与假名。",
    case_ref: "案件/令状编号", pseudonym_key: "假名化密钥", identities_hint: "身份，每行一个", identity_kind: "身份类型", auto: "自动识别",
    reidentify_go: "重识别", found: "已找到", check_key: "未找到任何记录：请核对密钥（错误的密钥会得到不同的假名）", identity: "身份", pseudonym: "假名",
    messages: "信令消息", hunt_flows: "狩猎其流量",
    incidents: "安全事件", incident: "事件", stages: "攻击阶段", entities: "关联实体", affected: "受影响资产",
    istate_new: "新事件", istate_investigating: "研判中", istate_contained: "已遏制", istate_closed: "已关闭",
    tactic_reconnaissance: "侦察", tactic_resource_development: "资源开发", tactic_initial_access: "初始访问", tactic_execution: "执行",
    tactic_persistence: "持久化", tactic_privilege_escalation: "权限提升", tactic_defense_evasion: "防御规避", tactic_credential_access: "凭据访问",
    tactic_discovery: "发现", tactic_lateral_movement: "横向移动", tactic_collection: "收集", tactic_command_and_control: "命令与控制",
    tactic_exfiltration: "数据渗出", tactic_impact: "破坏影响", tactic_unclassified: "未分类",
    notifications: "通知记录", title: "标题", containment: "应急处置：遏制导出", containment_export: "导出",
    fmt_nftables: "nftables 脚本", fmt_iptables: "iptables 脚本", fmt_suricata: "Suricata 阻断规则", fmt_stix: "STIX 2.1 指标", fmt_core: "5G 核心网清单 (SEID/TEID/用户)", channel: "通道", kind: "类型", attempts: "尝试次数", latency_ms: "时延(ms)", last_error: "失败原因",
    route: "路由", covers: "条数", delivered_at: "送达时间", created: "发出时间",
    kind_alert: "告警", kind_incident: "事件", kind_escalation: "升级", kind_digest: "汇总",
    nstatus_queued: "排队中", nstatus_retrying: "重试中", nstatus_delivered: "已送达", nstatus_failed: "发送失败", nstatus_digested: "已并入汇总",
    posture_scopes: "分域态势（资产 / 网元 / 切片）", level_changes: "预警等级变化及原因", scope: "范围", reason: "原因",
    trend_forecast: "趋势预测", trend_warnings: "趋势预警", trend_kind_forecast: "预测越限", trend_kind_crossed: "已越限", series: "指标",
    observed: "实际值", forecast: "预测值", expected_at: "预计越限时间",
    intel: "威胁情报", intel_feeds: "情报源", intel_matches: "命中最多的指标", feed: "情报源", format: "格式", enabled: "启用",
    indicators: "指标数", by_type: "按类型", expired: "已过期", skipped: "未导入", loaded_at: "加载时间", error: "错误",
    indicator: "指标", host: "主机", intel_none: "未配置情报源：以 --intel 运行回放或探针（见 docs/intel.md）",
  },
  en: {
    brand: "Liaowang · 5G security situational awareness", overview: "Overview", alerts: "Alerts", hunt: "Hunt", fiveg: "5G sessions", assets: "Assets",
    rules: "Rules", sensors: "Sensors", audit: "Audit", logout: "Sign out", login: "Sign in", username: "User name", password: "Password",
    login_failed: "Wrong user name or password", range: "Time range", all: "All data", custom: "Custom", apply: "Apply",
    last_15m: "Last 15 min", last_1h: "Last hour", last_6h: "Last 6 h", last_24h: "Last 24 h", last_7d: "Last 7 days", last_30d: "Last 30 days",
    warning_level: "Current warning level", level_red: "Red warning", level_orange: "Orange warning", level_yellow: "Yellow warning", level_blue: "Blue warning", level_normal: "Normal",
    why: "Why", open_alerts: "Open alerts", posture: "Posture score", posture_trend: "Posture trend", traffic: "Traffic", alerts_by_level: "Alerts by level",
    planes: "5G planes and protocols", applications: "Applications (bytes)", top_targets: "Most attacked assets", top_sources: "Top sources", attack_graph: "Attack graph",
    recent_critical: "Recent critical alerts", flows: "Flows", bytes: "Bytes", packets: "Packets", alerts_n: "Alerts", live: "live", time: "Time", level: "Level",
    signature: "Signature", category: "Category", detector: "Detector", technique: "ATT&CK/FiGHT technique", ip: "IP/CIDR", subscriber: "Subscriber (pseudonym)", status: "Status",
    text: "Text", search: "Search", group_by: "Group by", none: "none", source: "Source", target: "Target", score: "Score", assignee: "Assignee", count: "Count",
    status_new: "New", status_acknowledged: "Acknowledged", status_investigating: "Investigating", status_resolved: "Resolved", status_false_positive: "False positive",
    triage: "Triage", selected: "selected", comment: "Comment", set_status: "Set status", assign_to: "Assign to", no_change: "unchanged", done: "Updated",
    alert_detail: "Alert", why_fired: "Why it fired", evidence: "Evidence", score_explained: "Score", flow: "Flow", session: "5G session context", related: "Related alerts",
    comments: "Comments", audit_trail: "Audit trail", download_pcap: "Download packets (pcap)", no_flow: "This alert aggregates many flows: no single flow", back: "Back",
    hunt_hint: "e.g. ip=10.45.0.0/16 dst_port=443 sni~example plane=N3 bytes>100000", results: "results", pivot: "click a value to add it",
    sessions: "Sessions", inventory: "NF inventory", topology: "NF topology", role: "Role", state: "State", dnn: "DNN", snssai: "S-NSSAI", gnb: "gNB", upf: "UPF",
    ue_ip: "UE address", teids: "TEIDs (UL/DL)", traffic_n: "Traffic", first_seen: "First seen", last_seen: "Last seen", services: "Services", exposures: "Exposures",
    risk: "Risk", roles: "NF roles", peers: "Peers", sent: "Sent", received: "Received", enabled: "Enabled", threshold: "Threshold", window: "Window (s)", view_yaml: "YAML",
    save: "Save", admin_only: "admins only", sensor: "Sensor", pps: "packets/s", decode_errors: "Decode errors", drops: "Drops", lag: "Lag", last_seen_ago: "Last report",
    batches: "Batches", user: "User", action: "Action", detail: "Detail", client: "Client", page: "page", of: "of", prev: "Previous", next: "Next",
    forbidden: "Not allowed", error: "Error", loading: "Loading…", nothing: "Nothing here", timezone: "Time zone", language: "中文",
    rule: "Rule", group: "Group key", rule_status: "Rule status", capture_source: "Capture source",
    plane: "Plane", port: "Port", proto: "Protocol", app: "Application", server_name: "SNI / name", duration: "Duration (ms)", total: "Total",
    reidentify: "Lawful investigation: re-identify subscribers", reidentify_hint: "Enter the case or warrant reference, the pseudonym key and the identities the case names (IMSI/SUPI, MSISDN/GPSI, IMEI) to get their pseudonyms and where they appear. The key is used for this request only and never kept; the audit log records the case and the pseudonyms only.",
    case_ref: "Case / warrant reference", pseudonym_key: "Pseudonym key", identities_hint: "Identities, one per line", identity_kind: "Identity kind", auto: "Auto",
    reidentify_go: "Re-identify", found: "Found", check_key: "nothing found: check the key (a wrong key gives other pseudonyms)", identity: "Identity", pseudonym: "Pseudonym",
    messages: "Signalling messages", hunt_flows: "Hunt its flows",
    incidents: "Incidents", incident: "Incident", stages: "Stages", entities: "Entities", affected: "Affected assets",
    istate_new: "New", istate_investigating: "Investigating", istate_contained: "Contained", istate_closed: "Closed",
    tactic_reconnaissance: "Reconnaissance", tactic_resource_development: "Resource development", tactic_initial_access: "Initial access", tactic_execution: "Execution",
    tactic_persistence: "Persistence", tactic_privilege_escalation: "Privilege escalation", tactic_defense_evasion: "Defense evasion", tactic_credential_access: "Credential access",
    tactic_discovery: "Discovery", tactic_lateral_movement: "Lateral movement", tactic_collection: "Collection", tactic_command_and_control: "Command and control",
    tactic_exfiltration: "Exfiltration", tactic_impact: "Impact", tactic_unclassified: "Unclassified",
    notifications: "Notifications", title: "Title", containment: "Containment export", containment_export: "Export",
    fmt_nftables: "nftables script", fmt_iptables: "iptables script", fmt_suricata: "Suricata drop rules", fmt_stix: "STIX 2.1 indicators", fmt_core: "5G core list (SEID/TEID/subscribers)", channel: "Channel", kind: "Kind", attempts: "Attempts", latency_ms: "Latency (ms)", last_error: "Last error",
    route: "Route", covers: "Covers", delivered_at: "Delivered", created: "Created",
    kind_alert: "Alert", kind_incident: "Incident", kind_escalation: "Escalation", kind_digest: "Digest",
    nstatus_queued: "Queued", nstatus_retrying: "Retrying", nstatus_delivered: "Delivered", nstatus_failed: "Failed", nstatus_digested: "In a digest",
    posture_scopes: "Posture by scope (assets, NFs, slices)", level_changes: "Warning level changes and why", scope: "Scope", reason: "Reason",
    trend_forecast: "Trend forecast", trend_warnings: "Trend warnings", trend_kind_forecast: "Forecast to cross", trend_kind_crossed: "Crossed", series: "Series",
    observed: "Observed", forecast: "Forecast", expected_at: "Expected at",
    intel: "Threat intel", intel_feeds: "Feeds", intel_matches: "Most matched indicators", feed: "Feed", format: "Format", enabled: "Enabled",
    indicators: "Indicators", by_type: "By type", expired: "Expired", skipped: "Not imported", loaded_at: "Loaded", error: "Error",
    indicator: "Indicator", host: "Host", intel_none: "No feeds configured: run a replay or sensor with --intel (see docs/intel.md)",
  },
};

let lang = localStorage.getItem("liaowang.lang") || (navigator.language && navigator.language.startsWith("zh") ? "zh-CN" : "en");
export function t(key) { return (MESSAGES[lang] && MESSAGES[lang][key]) || MESSAGES.en[key] || key; }
export function language() { return lang; }
export function setLanguage(next) { lang = next; localStorage.setItem("liaowang.lang", next); document.documentElement.lang = next; }
export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso.length > 24 ? iso.slice(0, 23) + "Z" : iso);
  return new Intl.DateTimeFormat(lang, { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }).format(d);
}
export function fmtNumber(n) { return n == null ? "" : new Intl.NumberFormat(lang).format(n); }
export function fmtBytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + " " + units[i];
}
export function timeZone() { return Intl.DateTimeFormat().resolvedOptions().timeZone; }
