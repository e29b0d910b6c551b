/**
 * Splits an array into chunks of at most the given size.
 */
export function chunk<T>(items: T[], size: number): T[][] {
  const chunks: T[][] = [];
  for (let i = 0; i < items.length; i += size) {
    chunks.push(items.slice(i, i + size));
  }
  return chunks;
}

/**
 * Groups items by the key a callback returns for each of them.
 */
export function groupBy<T>(items: T[], key: (item: T) => string): Record<string, T[]> {
  const groups: Record<string, T[]> = {};
  for (const item of items) {
    const name = key(item);
    (groups[name] = groups[name] || []).push(item);
  }
  return groups;
}

/**
 * Removes duplicate values while keeping the first occurrence order.
 */
export function unique<T>(items: T[]): T[] {
  const seen = new Set<T>();
  const result: T[] = [];
  for (const item of items) {
    if (!seen.has(item)) {
      seen.add(item);
      result.push(item);
    }
  }
  return result;
}

/**
 * Counts how often each value occurs in an array of strings.
 */
export function countValues(items: string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const item of items) {
    counts.set(item, (counts.get(item) || 0) + 1);
  }
  return counts;
}

/**
 * Sorts objects by a numeric field in descending order without mutating the input.
 */
export function sortByDesc<T>(items: T[], field: (item: T) => number): T[] {
  return [...items].sort((a, b) => {
    const left = field(a);
    const right = field(b);
    return right - left;
  });
}

/**
 * Returns the largest element according to a scoring callback.
 */
export function maxBy<T>(items: T[], score: (item: T) => number): T | undefined {
  let best: T | undefined;
  let bestScore = -Infinity;
  for (const item of items) {
    const value = score(item);
    if (value > bestScore) {
      best = item;
      bestScore = value;
    }
  }
  return best;
}

/**
 * Flattens an array of arrays by one level into a single array.
 */
export function flatten<T>(nested: T[][]): T[] {
  const result: T[] = [];
  for (const inner of nested) {
    result.push(...inner);
  }
  return result;
}

/**
 * Builds a lookup map from an array using a key function.
 */
export function indexBy<T>(items: T[], key: (item: T) => string): Map<string, T> {
  const map = new Map<string, T>();
  for (const item of items) {
    map.set(key(item), item);
  }
  return map;
}
