/**
 * Formats a byte count as a human readable size with a unit.
 */
export function formatBytes(bytes: number, decimals = 1): string {
  if (bytes === 0) {
    return "0 B";
  }
  const units = ["B", "KB", "MB", "GB", "TB"];
  const index = Math.floor(Math.log(bytes) / Math.log(1024));
  return `${(bytes / Math.pow(1024, index)).toFixed(decimals)} ${units[index]}`;
}

/**
 * Converts a string to a URL friendly slug in lower case.
 */
export function slugify(text: string): string {
  return text
    .toLowerCase()
    .trim()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "");
}

/**
 * Shortens text to a maximum length and appends an ellipsis.
 */
export function truncate(text: string, max: number): string {
  if (text.length <= max) {
    return text;
  }
  return text.slice(0, Math.max(0, max - 1)) + "…";
}

/**
 * Formats a duration in milliseconds as minutes and seconds.
 */
export function formatDuration(ms: number): string {
  const totalSeconds = Math.round(ms / 1000);
  const minutes = Math.floor(totalSeconds / 60);
  const seconds = totalSeconds % 60;
  return `${minutes}m ${seconds.toString().padStart(2, "0")}s`;
}

/**
 * Capitalizes the first letter of every word in a sentence.
 */
export function titleCase(text: string): string {
  return text
    .split(" ")
    .map((word) => word.charAt(0).toUpperCase() + word.slice(1))
    .join(" ");
}

/**
 * Pads a number with leading zeros to a fixed width.
 */
export function zeroPad(value: number, width: number): string {
  let text = String(value);
  while (text.length < width) {
    text = "0" + text;
  }
  return text;
}

/**
 * Formats a date as an ISO calendar day without the time.
 */
export function isoDay(date: Date): string {
  const year = date.getFullYear();
  const month = zeroPad(date.getMonth() + 1, 2);
  const day = zeroPad(date.getDate(), 2);
  return `${year}-${month}-${day}`;
}

/**
 * Parses a comma separated list into trimmed non-empty items.
 */
export function parseList(text: string): string[] {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
}
