"""Every word of the reports, in zh-CN and English (the console's own labels live in static/i18n.js)."""

from __future__ import annotations

from detection.incidents import TACTICS

_TACTICS = {  # in the order of detection.incidents.TACTICS
    "zh-CN": ["侦察", "资源开发", "初始访问", "执行", "持久化", "权限提升", "防御规避", "凭据访问", "发现", "横向移动",
              "收集", "命令与控制", "数据渗出", "破坏影响"],
    "en": ["Reconnaissance", "Resource development", "Initial access", "Execution", "Persistence",
           "Privilege escalation", "Defense evasion", "Credential access", "Discovery", "Lateral movement",
           "Collection", "Command and control", "Exfiltration", "Impact"],
}
WORDS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "brand": "瞭望", "situation_day": "网络安全态势日报", "situation_week": "网络安全态势周报", "period": "统计时段",
        "generated": "生成时间", "timezone": "时区", "summary": "态势概要", "warning_level": "预警等级",
        "level_red": "红色", "level_orange": "橙色", "level_yellow": "黄色", "level_blue": "蓝色", "level_normal": "正常",
        "posture_score": "态势评分", "alerts": "告警", "incidents": "安全事件", "traffic": "流量", "flows": "条流",
        "packets": "个包", "bytes": "字节", "notifications": "预警通知", "status_delivered": "已送达",
        "status_failed": "发送失败", "status_queued": "排队中", "status_retrying": "重试中", "status_digested": "已汇总",
        "status_word": "状态", "intel_matches": "威胁情报命中", "alerts_over_time": "告警趋势（按等级）",
        "traffic_over_time": "流量趋势", "top_signatures": "主要告警类型", "top_sources": "主要攻击来源",
        "top_targets": "受攻击最多的资产", "planes": "5G 平面与协议构成（字节）", "level": "等级", "score": "评分",
        "incident": "事件", "stages": "攻击阶段", "stage": "阶段", "state": "状态", "case": "案件",
        "first_seen": "首次发现", "last_seen": "最近发现", "state_new": "新事件", "state_investigating": "调查中",
        "state_contained": "已遏制", "state_closed": "已关闭", "posture_changes": "预警等级变化", "time": "时间",
        "scope": "范围", "reason": "原因", "trend": "趋势预测与预警", "kind": "类型", "series": "指标",
        "trend_forecast": "预测越限", "trend_crossed": "已越限", "incident_report": "安全事件报告",
        "signatures": "告警名称", "signature": "告警名称", "entities": "关联实体", "affected_assets": "受影响资产",
        "subscribers": "用户（假名）", "slices": "切片", "containment": "处置建议",
        "containment_hint": "以下攻击源可在控制台导出为 nftables / iptables / Suricata 规则、STIX 2.1 指标或 5G 核心网清单"
                            "（不会封堵运营商自身网元）：",
        "source": "源", "target": "目的", "channel": "通道", "assignee": "负责人", "opened_by": "立案人",
        "notes": "研判与处置记录", "user": "用户", "detail": "内容", "event_note": "记录", "event_state": "状态",
        "event_assigned": "指派", "evidence": "证据", "reference": "编号 / 位置", "label": "说明",
        "evidence_alert": "告警", "evidence_flow": "流", "evidence_pcap": "报文 (pcap)", "evidence_file": "文件",
        "nothing": "无", "tactic_unclassified": "未分类",
    },
    "en": {
        "brand": "Liaowang", "situation_day": "Daily security situation report",
        "situation_week": "Weekly security situation report", "period": "Period", "generated": "Generated",
        "timezone": "Time zone", "summary": "Summary", "warning_level": "Warning level", "level_red": "Red",
        "level_orange": "Orange", "level_yellow": "Yellow", "level_blue": "Blue", "level_normal": "Normal",
        "posture_score": "Posture score", "alerts": "Alerts", "incidents": "Incidents", "traffic": "Traffic",
        "flows": "flows", "packets": "packets", "bytes": "Bytes", "notifications": "Notifications",
        "status_delivered": "delivered", "status_failed": "failed", "status_queued": "queued",
        "status_retrying": "retrying", "status_digested": "in a digest", "status_word": "Status",
        "intel_matches": "Threat-intelligence matches", "alerts_over_time": "Alerts over time, by level",
        "traffic_over_time": "Traffic over time", "top_signatures": "Top alert types", "top_sources": "Top sources",
        "top_targets": "Most attacked assets", "planes": "5G planes and protocols (bytes)", "level": "Level",
        "score": "Score", "incident": "Incident", "stages": "Stages", "stage": "Stage", "state": "State", "case": "Case",
        "first_seen": "First seen", "last_seen": "Last seen", "state_new": "new", "state_investigating": "investigating",
        "state_contained": "contained", "state_closed": "closed", "posture_changes": "Warning level changes",
        "time": "Time", "scope": "Scope", "reason": "Reason", "trend": "Trend forecast and warnings", "kind": "Kind",
        "series": "Series", "trend_forecast": "forecast to cross", "trend_crossed": "crossed",
        "incident_report": "Incident report", "signatures": "Signatures", "signature": "Signature",
        "entities": "Entities", "affected_assets": "Affected assets", "subscribers": "Subscribers (pseudonyms)",
        "slices": "Slices", "containment": "Containment",
        "containment_hint": "The console exports these actors as nftables, iptables or Suricata rules, STIX 2.1 "
                            "indicators or a 5G core list (the operator's own network functions are never blocked):",
        "source": "Source", "target": "Target", "channel": "Channel", "assignee": "Assignee", "opened_by": "Opened by",
        "notes": "Notes and actions", "user": "User", "detail": "Detail", "event_note": "note", "event_state": "state",
        "event_assigned": "assigned", "evidence": "Evidence", "reference": "ID / location", "label": "Label",
        "evidence_alert": "alert", "evidence_flow": "flow", "evidence_pcap": "packets (pcap)", "evidence_file": "file",
        "nothing": "None", "tactic_unclassified": "Unclassified",
    },
}
for _lang, _names in _TACTICS.items():
    WORDS[_lang].update({f"tactic_{t}": n for t, n in zip(TACTICS, _names, strict=True)})
