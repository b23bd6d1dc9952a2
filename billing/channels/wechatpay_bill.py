"""WeChat Pay's daily trade bill (API v3 `GET /v3/bill/tradebill`, `bill_type=ALL`) ->
the statement rows reconciliation compares.

Pure parsing, no I/O. What the layout rests on:
* WeChat Pay, "交易账单文件格式说明",
  https://pay.weixin.qq.com/docs/merchant/products/bill-download/format-trade.html :
  a bill is four parts, detail header, detail rows, summary header, summary row;
  fields are separated by ','; every field of the detail and summary rows is prefixed
  with one character (the backtick `) so spreadsheets keep long numbers; `ALL` holds the
  day's payments (dated by payment success) and refunds (dated by refund acceptance),
  a payment and its refund being two separate rows; the cut is 00:00 Beijing time.
* "申请交易账单", https://pay.weixin.qq.com/docs/merchant/apis/jsapi-payment/get-trade-bill.html :
  amounts are in yuan; `tar_type=GZIP` makes the download a gzip stream.
* The `ALL` columns (as in the brief, and identical in public SDKs' parsers and test
  fixtures, e.g. WxJava's bill parser): 交易时间,公众账号ID,商户号,特约商户号,设备号,
  微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,
  代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,
  商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注; then the summary
  总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额.
  交易状态 is SUCCESS on a payment row, REFUND on a refund row (REVOKED: a revoked
  micropay); 退款状态 SUCCESS / PROCESSING / FAIL / CHANGE.

Mapping: a SUCCESS row is PAY (trade_no 微信订单号, out_trade_no 商户订单号, amount
订单金额 = the `amount.total` of our order, before any coupon); a REFUND row is REFUND
(out_refund_no 商户退款单号 = our refund id, amount 申请退款金额 = what we asked to
refund) when its 退款状态 is SUCCESS or PROCESSING. A refund that FAILed or went
abnormal (CHANGE) paid nothing back, and a REVOKED payment was not paid: those rows are
left out, so our side of them shows up as a difference. Columns are found by header
name; amounts are exact 2-decimal yuan text parsed into fen; times (交易时间, Beijing) go
to UTC. A malformed row is refused with its line number, and so is a bill without its
summary or whose summary (总交易单数, 订单总金额, 申请退款总金额) does not match its rows.
"""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from billing.channels.sandbox import StatementRow

CN = ZoneInfo("Asia/Shanghai")
MAX_BYTES = 256 * 1024 * 1024  # uncompressed

COL_TIME = "交易时间"
COL_TRANSACTION = "微信订单号"
COL_OUT_TRADE_NO = "商户订单号"
COL_STATE = "交易状态"
COL_CURRENCY = "货币种类"
COL_REFUND_NO = "商户退款单号"
COL_REFUND_STATE = "退款状态"
COL_TOTAL = "订单金额"
COL_REFUND_ASKED = "申请退款金额"
REQUIRED = (COL_TIME, COL_TRANSACTION, COL_OUT_TRADE_NO, COL_STATE, COL_CURRENCY,
            COL_REFUND_NO, COL_REFUND_STATE, COL_TOTAL, COL_REFUND_ASKED)
SUMMARY_FIRST = "总交易单数"
SUM_COUNT, SUM_TOTAL, SUM_REFUND_ASKED = "总交易单数", "订单总金额", "申请退款总金额"
CHECKED = ("应结订单金额", "代金券金额", "退款金额", "充值券退款金额")  # amounts not compared,
# still required to be well-formed when present (手续费 has 5 decimals: not checked)
REFUND_COUNTED = frozenset({"SUCCESS", "PROCESSING"})
REFUND_LEFT_OUT = frozenset({"FAIL", "CHANGE"})

_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,12})\.([0-9]{2})")


class WechatBillError(ValueError):
    """The file is not a well-formed WeChat Pay trade bill; the message names the line."""


def fen(text: str, where: str) -> int:
    """'6.00' -> 600. Exactly two decimals, no sign, no float anywhere."""
    m = _AMOUNT.fullmatch(text)
    if not m:
        raise WechatBillError(f"{where}: not a yuan amount with 2 decimals: {text[:32]!r}")
    return int(m.group(1)) * 100 + int(m.group(2))


def _utc(text: str, where: str) -> str:
    try:
        t = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CN)
    except ValueError:
        raise WechatBillError(f"{where}: not a time (yyyy-MM-dd HH:mm:ss): {text[:32]!r}"
                              ) from None
    return t.astimezone(UTC).isoformat()


def bill_text(data: bytes) -> str:
    """The bill's text: gunzipped when it is a gzip stream (tar_type=GZIP), UTF-8."""
    if data.startswith(b"\x1f\x8b"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(data, MAX_BYTES + 1)
        except zlib.error as exc:
            raise WechatBillError(f"not a readable gzip stream: {exc}") from None
        if len(out) > MAX_BYTES:
            raise WechatBillError("the bill is too big")
        data = out
    elif len(data) > MAX_BYTES:
        raise WechatBillError("the bill is too big")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise WechatBillError("the bill is not UTF-8 text") from None


def _fields(line: str, where: str) -> list[str]:
    """`a,`b,`c -> [a, b, c]. Every field starts with a backtick; splitting on ',`' keeps
    a comma inside a free-text field (商品名称, 商户数据包) in its field."""
    if not line.startswith("`"):
        raise WechatBillError(f"{where}: a data row must start with a backtick")
    return line[1:].split(",`")


def parse_wechatpay_bill(data: bytes) -> list[StatementRow]:
    """The downloaded `ALL` trade bill (bytes, plain or gzip) -> statement rows.
    WechatBillError (a ValueError) names the line of anything malformed."""
    lines = bill_text(data).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise WechatBillError("the bill is empty")
    names = [h.strip().lstrip("`") for h in lines[0].split(",")]
    header = {name: i for i, name in enumerate(names)}
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise WechatBillError("wechatpay bill line 1: not an ALL trade bill header (lacks "
                              f"{', '.join(missing)})")
    width = len(names)
    rows: list[StatementRow] = []
    detail = total = asked = 0
    summary_at = next((i for i, line in enumerate(lines)
                       if line.lstrip("`").startswith(SUMMARY_FIRST)), None)
    if summary_at is None or summary_at + 1 >= len(lines):
        raise WechatBillError("the bill has no summary (总交易单数,...) after its rows: "
                              "truncated?")
    if summary_at + 2 != len(lines):
        raise WechatBillError(f"wechatpay bill line {summary_at + 3}: text after the summary")
    for i in range(1, summary_at):
        n = i + 1
        where = f"wechatpay bill line {n}"
        if not lines[i].strip():
            continue
        fields = _fields(lines[i], where)
        if len(fields) != width:
            raise WechatBillError(f"{where}: {len(fields)} fields, the header has {width}")
        rec = {name: fields[i].strip() for name, i in header.items()}
        detail += 1
        order_total = fen(rec[COL_TOTAL], f"{where}, {COL_TOTAL}")
        refund_asked = fen(rec[COL_REFUND_ASKED], f"{where}, {COL_REFUND_ASKED}")
        total += order_total
        asked += refund_asked
        when = _utc(rec[COL_TIME], f"{where}, {COL_TIME}")
        for name in CHECKED:
            if name in rec:
                fen(rec[name], f"{where}, {name}")
        if rec[COL_CURRENCY] != "CNY":
            raise WechatBillError(f"{where}: currency {rec[COL_CURRENCY][:8]!r}, not CNY")
        transaction, out_trade_no = rec[COL_TRANSACTION], rec[COL_OUT_TRADE_NO]
        if not transaction or not out_trade_no:
            raise WechatBillError(f"{where}: empty 微信订单号 or 商户订单号")
        state = rec[COL_STATE]
        if state == "SUCCESS":
            if order_total <= 0:
                raise WechatBillError(f"{where}: a payment of {rec[COL_TOTAL]}")
            rows.append(StatementRow("PAY", transaction, out_trade_no, "", order_total, when))
        elif state == "REFUND":
            refund_state, refund_no = rec[COL_REFUND_STATE], rec[COL_REFUND_NO]
            if not refund_no or refund_asked <= 0:
                raise WechatBillError(f"{where}: a refund row without 商户退款单号 or amount")
            if refund_state in REFUND_COUNTED:
                rows.append(StatementRow("REFUND", transaction, out_trade_no, refund_no,
                                         refund_asked, when))
            elif refund_state not in REFUND_LEFT_OUT:
                raise WechatBillError(f"{where}: unknown 退款状态 {refund_state[:16]!r}")
        elif state != "REVOKED":
            raise WechatBillError(f"{where}: unknown 交易状态 {state[:16]!r}")
    n = summary_at + 1
    s_names = [h.strip().lstrip("`") for h in lines[summary_at].split(",")]
    s_values = [v.strip().lstrip("`") for v in lines[summary_at + 1].split(",")]
    if len(s_names) != len(s_values):
        raise WechatBillError(f"wechatpay bill line {n + 1}: {len(s_values)} summary "
                              f"fields, its header has {len(s_names)}")
    summary = dict(zip(s_names, s_values, strict=True))
    for name in (SUM_COUNT, SUM_TOTAL, SUM_REFUND_ASKED):
        if name not in summary:
            raise WechatBillError(f"wechatpay bill line {n}: summary lacks {name}")
    where = f"wechatpay bill line {n + 1}"
    if not summary[SUM_COUNT].isdigit() or int(summary[SUM_COUNT]) != detail:
        raise WechatBillError(f"{where}: {SUM_COUNT} is {summary[SUM_COUNT][:16]!r}, the bill "
                              f"has {detail} rows")
    for name, have in ((SUM_TOTAL, total), (SUM_REFUND_ASKED, asked)):
        if fen(summary[name], f"{where}, {name}") != have:
            raise WechatBillError(f"{where}: {name} is {summary[name]}, the rows sum to "
                                  f"{have} fen")
    return rows


__all__ = ["WechatBillError", "parse_wechatpay_bill"]
