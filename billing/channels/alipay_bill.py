"""Alipay's daily trade bill ("业务明细") -> the statement rows reconciliation compares.

Pure parsing, no I/O. The input is the file as downloaded from the URL that
`alipay.data.dataservice.bill.downloadurl.query` returns for `bill_type=trade`:
a zip (`<pid>_<yyyymmdd>.csv.zip`) holding the detail file `..._业务明细.csv` and
a summary file `..._业务明细(汇总).csv`. A bare detail CSV is accepted too.

What the layout below rests on (no official column table was in the stored
corpus, so it is cross-checked from several public sources):
* the API and the bill types: https://opendocs.alipay.com/apis/api_15/alipay.data.dataservice.bill.downloadurl.query
  and the reconciliation guide https://opendocs.alipay.com/open/204/106262;
* encoding and packaging: https://developer.aliyun.com/article/707638 (Alipay's
  integration notes: `fileType=csv.zip`, the CSV is "ANSI", i.e. GBK; `trade` is the
  acquiring business bill, `signcustomer` the account-flow bill "账务明细");
* the file's shape, as seen in published copies of real bills (test fixtures in
  public repositories): '#' lines before the table (`#支付宝业务明细查询`, `#账号：[...]`,
  `#起始日期：[...]   终止日期：[...]`, `#----...业务明细列表----...`), one header row,
  the rows, then '#' lines after (`#----...业务明细列表结束----...`,
  `#交易合计：6笔，商家实收共0.06元，...`, `#退款合计：4笔，商家实收退款共-0.04元，...`,
  `#导出时间：[...]`). Header: 支付宝交易号,商户订单号,业务类型,商品名称,创建时间,
  完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,
  支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,
  商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注.
  Identifier fields carry a trailing TAB (so spreadsheets keep long numbers); 业务类型 is
  `交易` (a payment) or `退款` (a refund: amounts negative, 退款批次号/请求号 = the
  `out_request_no` we sent to alipay.trade.refund, i.e. our refund id); times are Beijing
  time, `yyyy-MM-dd HH:mm:ss`.

Mapping: a `交易` row is PAY (trade_no 支付宝交易号, out_trade_no 商户订单号, amount
订单金额（元）= the `total_amount` of our order, time 完成时间); a `退款` row is REFUND
(out_refund_no 退款批次号/请求号, amount −订单金额（元）, time 完成时间). Columns are found
by header name, not position. Amounts are parsed as exact decimal text into fen. Any
row that does not fit is refused with its line number; so is a file without the
end-of-list marker (truncated), and one whose `#交易合计`/`#退款合计` counts or sums do
not match its rows.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from billing.channels.sandbox import StatementRow

CN = ZoneInfo("Asia/Shanghai")
TITLE = "#支付宝业务明细查询"
ACCOUNT_FLOW_TITLE = "#支付宝账务明细查询"   # bill_type=signcustomer: another format
SUMMARY_TITLE = "#支付宝业务汇总查询"
END_MARK = "业务明细列表结束"
MAX_BYTES = 256 * 1024 * 1024  # uncompressed; a bigger detail file is refused

COL_TRADE_NO = "支付宝交易号"
COL_OUT_TRADE_NO = "商户订单号"
COL_TYPE = "业务类型"
COL_FINISHED = "完成时间"
COL_AMOUNT = "订单金额（元）"
COL_RECEIVED = "商家实收（元）"
COL_REQUEST_NO = "退款批次号/请求号"
REQUIRED = (COL_TRADE_NO, COL_OUT_TRADE_NO, COL_TYPE, COL_FINISHED, COL_AMOUNT, COL_RECEIVED,
            COL_REQUEST_NO)
TYPES = {"交易": "PAY", "退款": "REFUND"}

_AMOUNT = re.compile(r"(-?)(0|[1-9][0-9]{0,12})\.([0-9]{2})")
_TOTAL_PAY = re.compile(r"#交易合计[：:]\s*(\d+)\s*笔(?:[，,]\s*商家实收共\s*(-?[0-9.]+)\s*元)?")
_TOTAL_REFUND = re.compile(
    r"#退款合计[：:]\s*(\d+)\s*笔(?:[，,]\s*商家实收退款共\s*(-?[0-9.]+)\s*元)?")


class AlipayBillError(ValueError):
    """The file is not a well-formed Alipay trade bill; the message names the line."""


def fen(text: str, where: str) -> int:
    """'6.00' -> 600, '-0.01' -> -1. Exactly two decimals, no float anywhere."""
    m = _AMOUNT.fullmatch(text)
    if not m:
        raise AlipayBillError(f"{where}: not a yuan amount with 2 decimals: {text[:32]!r}")
    v = int(m.group(2)) * 100 + int(m.group(3))
    return -v if m.group(1) else v


def _utc(text: str, where: str) -> str:
    try:
        t = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CN)
    except ValueError:
        raise AlipayBillError(f"{where}: not a time (yyyy-MM-dd HH:mm:ss): {text[:32]!r}"
                              ) from None
    return t.astimezone(UTC).isoformat()


def _decode(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8")
    try:
        return raw.decode("gbk")  # as Alipay publishes it
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("utf-8")  # re-saved by a tool
    except UnicodeDecodeError:
        raise AlipayBillError("the bill is neither GBK nor UTF-8 text") from None


def detail_text(data: bytes) -> str:
    """The detail CSV's text, from the downloaded zip or from the CSV itself."""
    if data.startswith(b"PK\x03\x04"):
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise AlipayBillError(f"not a readable zip: {exc}") from None
        titles = []
        with zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if info.file_size > MAX_BYTES:
                    raise AlipayBillError(f"zip member of {info.file_size} bytes is too big")
                text = _decode(zf.read(info))
                first = text.lstrip().split("\n", 1)[0].strip().strip(",")
                if first == TITLE:
                    return text
                titles.append(first[:40])
        raise AlipayBillError("the zip holds no 业务明细 detail file (first lines: "
                              f"{titles})")
    if len(data) > MAX_BYTES:
        raise AlipayBillError(f"bill of {len(data)} bytes is too big")
    return _decode(data)


def _norm_header(name: str) -> str:
    return name.strip().replace("(", "（").replace(")", "）")


def parse_alipay_bill(data: bytes) -> list[StatementRow]:
    """The downloaded trade bill (zip or CSV bytes) -> statement rows. AlipayBillError
    (a ValueError) names the line of anything malformed."""
    lines = detail_text(data).splitlines()
    header: dict[str, int] | None = None
    width = 0
    rows: list[StatementRow] = []
    received = {"PAY": 0, "REFUND": 0}
    ended = False
    totals: dict[str, tuple[int, str | None]] = {}
    for n, line in enumerate(lines, start=1):
        where = f"alipay bill line {n}"
        stripped = line.strip()
        if n == 1:
            first = stripped.strip(",")
            if first == ACCOUNT_FLOW_TITLE:
                raise AlipayBillError("this is the account-flow bill (账务明细, bill_type="
                                      "signcustomer); reconcile needs the trade bill (业务明细,"
                                      " bill_type=trade)")
            if first == SUMMARY_TITLE:
                raise AlipayBillError("this is the summary file (业务明细(汇总)); give the "
                                      "detail file or the whole zip")
            if first != TITLE:
                raise AlipayBillError(f"{where}: not an Alipay trade bill (expected "
                                      f"{TITLE!r}, got {first[:40]!r})")
        if not stripped.strip(","):
            continue
        if stripped.startswith("#"):
            if END_MARK in stripped:
                if header is None:
                    raise AlipayBillError(f"{where}: the list ends before any header row")
                ended = True
            for label, rx in (("PAY", _TOTAL_PAY), ("REFUND", _TOTAL_REFUND)):
                m = rx.match(stripped)
                if m:
                    totals[label] = (int(m.group(1)), m.group(2))
            continue
        if ended:
            raise AlipayBillError(f"{where}: a row after the end of the list")
        try:
            raw = next(csv.reader([line]))
        except csv.Error as exc:
            raise AlipayBillError(f"{where}: {exc}") from None
        fields = [f.strip() for f in raw]  # identifiers carry a trailing TAB
        if header is None:
            header = {_norm_header(name): i for i, name in enumerate(fields)}
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise AlipayBillError(f"{where}: header row lacks {', '.join(missing)}")
            width = len(fields)
            continue
        if len(fields) != width:
            raise AlipayBillError(f"{where}: {len(fields)} fields, the header has {width}")
        rec = {name: fields[i] for name, i in header.items()}
        kind = TYPES.get(rec[COL_TYPE])
        if kind is None:
            raise AlipayBillError(f"{where}: unknown 业务类型 {rec[COL_TYPE][:20]!r} "
                                  "(expected 交易 or 退款)")
        trade_no, out_trade_no = rec[COL_TRADE_NO], rec[COL_OUT_TRADE_NO]
        if not trade_no or not out_trade_no:
            raise AlipayBillError(f"{where}: empty 支付宝交易号 or 商户订单号")
        amount = fen(rec[COL_AMOUNT], f"{where}, {COL_AMOUNT}")
        got = fen(rec[COL_RECEIVED], f"{where}, {COL_RECEIVED}")
        when = _utc(rec[COL_FINISHED], f"{where}, {COL_FINISHED}")
        if kind == "PAY":
            if amount <= 0:
                raise AlipayBillError(f"{where}: a 交易 row with amount {rec[COL_AMOUNT]}")
            rows.append(StatementRow("PAY", trade_no, out_trade_no, "", amount, when))
        else:
            request_no = rec[COL_REQUEST_NO]
            if amount >= 0:
                raise AlipayBillError(f"{where}: a 退款 row with amount {rec[COL_AMOUNT]} "
                                      "(refunds are negative)")
            if not request_no:
                raise AlipayBillError(f"{where}: a 退款 row without 退款批次号/请求号")
            rows.append(StatementRow("REFUND", trade_no, out_trade_no, request_no, -amount,
                                     when))
        received[kind] += got
    if header is None:
        raise AlipayBillError("the bill has no header row")
    if not ended:
        raise AlipayBillError("the bill has no end-of-list line (业务明细列表结束): truncated?")
    for typ, label in (("PAY", "交易合计"), ("REFUND", "退款合计")):
        if typ not in totals:
            continue
        count, total = totals[typ]
        have = sum(1 for r in rows if r.type == typ)
        if count != have:
            raise AlipayBillError(f"#{label} says {count} rows, the list has {have}")
        if total is not None and fen(total, f"#{label}") != received[typ]:
            raise AlipayBillError(f"#{label} says {total} yuan received, the rows sum to "
                                  f"{received[typ]} fen")
    return rows


__all__ = ["AlipayBillError", "parse_alipay_bill"]
